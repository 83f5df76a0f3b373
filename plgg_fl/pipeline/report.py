"""The summary table: median [IQR] Dice per method per test set (site x comparison), from the scalar
metrics the sites returned: ``{site: {method: {"<split>/groups/<comparison>/dice/median": v, ...}}}``
(the flattened ``plgg_fl.engine.evaluate_cases`` summary; comparisons ``model_vs_<rater>``, pooled
``model_vs_raters`` and ``inter_rater`` where a site has several experts)."""

from __future__ import annotations

import math
import re

_DICE_MEDIAN = re.compile(r"^(?P<split>[^/]+)/groups/(?P<cmp>[^/]+)/dice/median$")


def summary_rows(evaluation: dict, methods: list[str]) -> list[dict]:
    """One row per (method, site, comparison) with the Dice median, q1, q3 and n."""
    rows = []
    for site in sorted(evaluation):
        for method in methods:
            metrics = evaluation[site].get(method, {})
            for key in sorted(metrics):
                m = _DICE_MEDIAN.match(key)
                if not m or not (m["cmp"].startswith("model_vs_") or m["cmp"] == "inter_rater"):
                    continue  # expert-pair rows are summarised by the pooled inter_rater group
                base = key[: -len("/median")]
                ref = m["cmp"] if m["split"] == "test" else f"{m['split']}:{m['cmp']}"
                rows.append({
                    "method": method, "site": site, "reference": ref,
                    "median": metrics[key], "q1": metrics.get(base + "/q1", math.nan),
                    "q3": metrics.get(base + "/q3", math.nan), "n": metrics.get(base + "/n"),
                })
    return rows


def _cell(row: dict) -> str:
    return f"{row['median']:.3f} [{row['q1']:.3f}-{row['q3']:.3f}]"


def summary_table(rows: list[dict], sites: list[str]) -> str:
    """Methods down, ``site: reference`` across; each cell ``median [q1-q3]``."""
    cols: list[tuple[str, str]] = []
    for r in rows:
        c = (r["site"], r["reference"])
        if c not in cols:
            cols.append(c)
    cols.sort(key=lambda c: (sites.index(c[0]) if c[0] in sites else 99, c[1]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = {(r["method"], r["site"], r["reference"]): _cell(r) for r in rows}
    heads = [f"{s}: {ref}" for s, ref in cols]
    width = max([len("method"), *map(len, methods)]) + 2
    colw = [max(len(h), 21) + 2 for h in heads]
    lines = ["Dice, median [IQR] per method and test set", "method".ljust(width) + "".join(h.ljust(w) for h, w in zip(heads, colw))]
    lines.append("-" * len(lines[-1]))
    for m in methods:
        lines.append(m.ljust(width) + "".join(cells.get((m, s, ref), "-").ljust(w) for (s, ref), w in zip(cols, colw)))
    return "\n".join(lines)
