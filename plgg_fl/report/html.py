"""Render a report document to Markdown (images as files beside it) and to one self-contained HTML file
(images embedded as base64 PNG, inline CSS, no scripts, no network).

A document is a list of blocks: ``("h1"|"h2"|"h3", text)``, ``("p", text)``, ``("note", text)``,
``("table", head, body, caption)``, ``("img", path, caption)``, ``("pre", text, summary)``,
``("cards", [(title, value, sub, kind)])`` with kind "ours" or "paper".
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:18px 28px 40px;background:#fff}
h1{font-size:23px;margin:4px 0 2px}h2{font-size:18px;margin:26px 0 8px;border-bottom:2px solid #e3e6eb;padding-bottom:3px}
h3{font-size:15px;margin:16px 0 6px}p{margin:6px 0;line-height:1.4;font-size:14px}
.note{font-size:12.5px;color:#5a6170}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 4px;width:100%}
th,td{border:1px solid #dde1e7;padding:3px 6px;text-align:left;white-space:nowrap}
th{background:#eef1f5;font-weight:600;white-space:normal}tr:nth-child(even) td{background:#fafbfc}
caption{caption-side:bottom;text-align:left;font-size:12px;color:#5a6170;padding-top:3px;white-space:normal}
.wrap{overflow-x:auto}figure{margin:10px 0}figure img{max-width:100%;border:1px solid #e3e6eb}
figcaption{font-size:12px;color:#5a6170}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:10px 0}
.card{flex:1 1 200px;border-radius:6px;padding:8px 12px;border:1px solid #cfd6e0}
.card.ours{background:#eef6ff;border-color:#9cc3ec}.card.paper{background:#fff6e8;border-color:#e8c27c}
.card .t{font-size:12px;color:#4a5160}.card .v{font-size:21px;font-weight:700;margin:2px 0}.card .s{font-size:11.5px;color:#5a6170}
pre{background:#f3f4f6;padding:8px;font-size:11.5px;overflow-x:auto}details{margin:6px 0}
"""


def _md_table(head, body, caption) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines) + (f"\n\n*{caption}*" if caption else "")


def to_markdown(doc: list[tuple], img_dir: Path, md_path: Path) -> Path:
    """Write ``md_path``; images are referenced relative to it (they must lie under ``img_dir``)."""
    out = []
    for b in doc:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "note":
            out.append(f"> {b[1]}")
        elif kind == "table":
            out.append(_md_table(b[1], b[2], b[3]))
        elif kind == "img":
            rel = Path(b[1]).resolve().relative_to(md_path.parent.resolve())
            out.append(f"![{b[2]}]({rel.as_posix()})\n\n*{b[2]}*")
        elif kind == "pre":
            out.append(f"<details><summary>{b[2]}</summary>\n\n```\n{b[1].rstrip()}\n```\n</details>")
        elif kind == "cards":
            out.append(_md_table(["", "Value", "Detail"], [[t, v, s] for t, v, s, _ in b[1]], ""))
    md_path.write_text("\n\n".join(out) + "\n", encoding="utf-8")
    return md_path


def _img_src(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(doc: list[tuple], path: Path, title: str) -> Path:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head><body><main>"]
    for b in doc:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "note":
            parts.append(f"<p class='note'>{e(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            cap = f"<caption>{e(b[3])}</caption>" if b[3] else ""
            parts.append(f"<div class='wrap'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
        elif kind == "img":
            parts.append(f"<figure><img src='{_img_src(b[1])}' alt='{e(b[2])}'><figcaption>{e(b[2])}</figcaption></figure>")
        elif kind == "pre":
            parts.append(f"<details><summary>{e(b[2])}</summary><pre>{e(b[1])}</pre></details>")
        elif kind == "cards":
            cards = "".join(f"<div class='card {k}'><div class='t'>{e(t)}</div><div class='v'>{e(v)}</div><div class='s'>{e(s)}</div></div>"
                            for t, v, s, k in b[1])
            parts.append(f"<div class='cards'>{cards}</div>")
    parts.append("</main></body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path
