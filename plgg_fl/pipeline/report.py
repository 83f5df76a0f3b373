"""The summary table: median [IQR] Dice per method per test set (site x comparison), from the scalar
metrics the sites returned: ``{site: {method: {"<split>/groups/<comparison>/dice/median": v, ...}}}``
(the flattened ``plgg_fl.engine.evaluate_cases`` summary; comparisons ``model_vs_<rater>``, pooled
``model_vs_raters`` and ``inter_rater`` where a site has several experts)."""

from __future__ import annotations

import math

from plgg_fl.fl.protocol import parse_summary_key, summary_key


def summary_rows(evaluation: dict, methods: list[str]) -> list[dict]:
    """One row per (method, site, comparison) with the Dice median, q1, q3 and n. A site that sent
    counts only (fewer cases than its minimum for a summary, ``plgg_fl.fl.client.MIN_SUMMARY_CASES``)
    gives a row with n and NaN statistics."""
    rows = []
    for site in sorted(evaluation):
        for method in methods:
            metrics = evaluation[site].get(method, {})
            for key in sorted(metrics):
                k = parse_summary_key(key)
                if k is None or (k.metric, k.statistic) != ("dice", "n"):
                    continue
                if not (k.comparison.startswith("model_vs_") or k.comparison == "inter_rater"):
                    continue  # expert-pair rows are summarised by the pooled inter_rater group
                ref = k.comparison if k.split == "test" else f"{k.split}:{k.comparison}"
                stat = {q: metrics.get(summary_key(k.split, k.comparison, "dice", q), math.nan) for q in ("median", "q1", "q3")}
                rows.append({"method": method, "site": site, "reference": ref, **stat, "n": metrics[key]})
    return rows


def _cell(row: dict) -> str:
    if math.isnan(row["median"]) and row.get("n") is not None:
        return f"counts only (n={int(row['n'])})"  # the site sends no statistics of so few cases
    if math.isnan(row["q1"]) and row.get("n") is not None:
        return f"{row['median']:.3f} (n={int(row['n'])})"  # median only: too few cases for quartiles
    return f"{row['median']:.3f} [{row['q1']:.3f}-{row['q3']:.3f}]"


#: console width the printed tables keep to
WIDTH = 100
_AGREEMENT = "inter-expert agreement"


def _split_of(reference: str) -> tuple[str, str]:
    """``"val:model_vs_ref"`` -> ``("val", "model_vs_ref")``; the test split has no prefix."""
    split, _, cmp = reference.rpartition(":")
    return split or "test", cmp


def _test_sets(rows: list[dict], sites: list[str]) -> list[tuple[str, str, str, str]]:
    """``(site, split, model comparison, header)`` per test set: against the experts pooled where a
    site has several (``model_vs_raters``), else against its one reference."""
    refs: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        split, cmp = _split_of(r["reference"])
        if cmp.startswith("model_vs_") and cmp not in refs.setdefault((r["site"], split), []):
            refs[(r["site"], split)].append(cmp)
    def order(key: tuple[str, str]) -> tuple:
        return (sites.index(key[0]) if key[0] in sites else 99, key[1] != "test", key[1])

    out = []
    for (site, split), cmps in sorted(refs.items(), key=lambda kv: order(kv[0])):
        experts = [c for c in cmps if c != "model_vs_raters"]
        pooled = "model_vs_raters" in cmps
        head = site + ("" if split == "test" else f" {split}") + (f" ({len(experts)} experts)" if pooled else "")
        out.append((site, split, "model_vs_raters" if pooled else sorted(experts)[0], head))
    return out


def _blocks(widths: list[int], first: int, limit: int = WIDTH) -> list[list[int]]:
    """Column indices in groups whose lines fit ``limit`` characters after a ``first``-wide column."""
    blocks: list[list[int]] = [[]]
    used = first
    for i, w in enumerate(widths):
        if blocks[-1] and used + w > limit:
            blocks.append([])
            used = first
        blocks[-1].append(i)
        used += w
    return blocks


def summary_table(rows: list[dict], sites: list[str]) -> str:
    """One row per method and one column per test set (site, split), each cell ``median [q1-q3]`` Dice;
    inter-expert agreement as a row of its own; lines of at most :data:`WIDTH` characters (more test
    sets than fit go into further blocks)."""
    sets = _test_sets(rows, sites)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells: dict[tuple[str, str, str], str] = {}
    for r in rows:
        split, cmp = _split_of(r["reference"])
        for site, s_split, model_cmp, head in sets:
            if (r["site"], split) != (site, s_split):
                continue
            if cmp == model_cmp:
                cells[(r["method"], site, split)] = _cell(r)
            elif cmp == "inter_rater":
                cells.setdefault((_AGREEMENT, site, split), _cell(r))
    labels = methods + ([_AGREEMENT] if any(k[0] == _AGREEMENT for k in cells) else [])
    first = max([len("method"), *map(len, labels)]) + 2
    widths = [max(len(h), 19) + 2 for *_, h in sets]
    lines = ["Dice, median [IQR], per method and test set"]
    for block in _blocks(widths, first):
        head = "method".ljust(first) + "".join(sets[i][3].ljust(widths[i]) for i in block)
        lines += ["", head.rstrip(), "-" * len(head.rstrip())]
        for label in labels:
            row = label.ljust(first) + "".join(cells.get((label, sets[i][0], sets[i][1]), "-").ljust(widths[i]) for i in block)
            lines.append(row.rstrip())
    return "\n".join(lines)


def reference_table(rows: list[dict], sites: list[str]) -> str:
    """Every row: method, ``site: reference`` (each expert, the experts pooled), Dice, n; inter-expert
    agreement (the same for every method) once per test set, as method ``experts``."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for r in rows:
        if r["reference"].endswith("inter_rater"):
            if (r["site"], r["reference"]) in seen:
                continue
            seen.add((r["site"], r["reference"]))
            r = {**r, "method": "experts"}
        kept.append(r)
    rows = kept
    order = sorted(rows, key=lambda r: (sites.index(r["site"]) if r["site"] in sites else 99, r["reference"]))
    width = max([len("method"), *(len(r["method"]) for r in rows)]) + 2
    sw = max([len("test set: reference"), *(len(f"{r['site']}: {r['reference']}") for r in rows)]) + 2
    lines = ["Dice per reference, median [IQR] (n)",
             "method".ljust(width) + "test set: reference".ljust(sw) + "Dice"]
    lines.append("-" * len(lines[-1]))
    for r in order:
        n = "" if r.get("n") is None or math.isnan(r["median"]) else f" ({int(r['n'])})"  # counts only: n is in the cell
        lines.append(r["method"].ljust(width) + f"{r['site']}: {r['reference']}".ljust(sw) + _cell(r) + n)
    return "\n".join(lines)
