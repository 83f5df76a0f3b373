"""The study table and the multi-rater table, from per-case rows (``per_case.csv``).

Per case, a method's value for a metric is its ``model_vs_<rater>`` value when the case has one
reference, and the mean over the references when it has several (external set: mean over the three
experts, NaN values left out). Statistics: :func:`plgg_fl.engine.metrics.describe` (median, q1, q3 by
linear interpolation; mean; sd with ddof 1; over defined values) and
:func:`plgg_fl.engine.metrics.paired_wilcoxon` (two-sided Wilcoxon signed-rank test, pairs = case keys
within one site). Units: Dice and surface Dice unitless (0-1), HD95 mm, volume difference ml
(prediction - reference, signed). Surface Dice is the surfel-based normalised surface Dice (Nikolov et
al. 2021, :mod:`plgg_fl.engine.metrics`); its label carries the tolerance the rows were computed with
(their ``nsd_tolerance_mm``, see :func:`surface_dice_label`), never an assumed one.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Iterable


from plgg_fl.engine.evaluate import per_case_values, pooled_values
from plgg_fl.engine.metrics import describe, paired_wilcoxon

#: (metric column in per_case.csv, label, digits); the surface Dice label gets its tolerance from the
#: rows (:func:`surface_dice_label`)
STUDY_METRICS = (("dice", "Dice", 3), ("hd95_mm", "HD95 (mm)", 1), ("surface_dice", "Surface Dice", 3),
                 ("vol_diff_ml", "Volume diff. (ml)", 1))
REFERENCE_METHOD = "scratch"


def _tolerance(x: Any) -> float | None:
    try:
        t = float(x)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) else None


def nsd_tolerances(rows: Iterable[dict]) -> list[float | None]:
    """The distinct surface-Dice tolerances (mm) of ``rows`` (their ``nsd_tolerance_mm``), ascending;
    None = a row that does not record it."""
    found = {_tolerance(r.get("nsd_tolerance_mm")) for r in rows}
    return sorted(found, key=lambda t: (t is None, t or 0.0))


def surface_dice_label(tolerances: Iterable[float | None]) -> str:
    """``Surface Dice (2 mm)`` for one recorded tolerance; says so when the tolerances differ or were
    not recorded (it never assumes the default)."""
    ts = list(dict.fromkeys(tolerances))
    known = [t for t in ts if t is not None]
    mm = ", ".join(f"{t:g}" for t in sorted(known)) + " mm"
    if not known:
        return "Surface Dice (tolerance not recorded)"
    if len(ts) == 1:
        return f"Surface Dice ({mm})"
    return f"Surface Dice (tolerances differ: {mm}" + ("; some not recorded)" if None in ts else ")")


def _label(metric: str, label: str, tolerances: list[float | None]) -> str:
    return surface_dice_label(tolerances) if metric == "surface_dice" else label


def _union(lists: Iterable[list[float | None]]) -> list[float | None]:
    return sorted({t for ts in lists for t in ts}, key=lambda t: (t is None, t or 0.0))


def raters(rows: Iterable[dict]) -> list[str]:
    """Reference names in the rows (the ``b`` of ``model_vs_*`` comparisons), in first-seen order."""
    return list(dict.fromkeys(r["b"] for r in rows if r["a"] == "model"))


def model_values(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """``{case key: value}`` of the model against the reference(s): mean over references per case."""
    return pooled_values(list(rows), metric, model=True)


def comparison_values(rows: Iterable[dict], comparison: str, metric: str) -> dict[str, float]:
    """``{case key: value}`` of one comparison (e.g. ``model_vs_expert1``, ``expert1_vs_expert2``)."""
    return per_case_values(list(rows), comparison, metric)


def inter_rater_values(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """``{case key: mean over rater pairs}`` (cases with at least two references)."""
    return pooled_values(list(rows), metric, model=False)


def reference_label(rows: list[dict]) -> str:
    rs = raters(rows)
    return rs[0] if len(rs) == 1 else f"mean of {len(rs)} references ({', '.join(rs)})"


def study_table(per_case: dict[tuple[str, str], list[dict]], sites: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """One row per (site, method): ``{site, method, reference, n, <metric>: describe(...), p_vs_scratch,
    median_diff_vs_scratch, n_pairs, nsd_tolerances_mm}``. ``p_vs_scratch`` is NaN for scratch itself or
    when scratch was not run; ``nsd_tolerances_mm``: :func:`nsd_tolerances` of the method's rows."""
    out = []
    for site in sites:
        ref_rows = per_case.get((site, REFERENCE_METHOD))
        ref_dice = model_values(ref_rows, "dice") if ref_rows else None
        for method in methods:
            rows = per_case.get((site, method))
            if not rows:
                continue
            row: dict[str, Any] = {"site": site, "method": method, "reference": reference_label(rows)}
            for metric, _, _ in STUDY_METRICS:
                row[metric] = describe(model_values(rows, metric).values())
            row["n"] = len(model_values(rows, "dice"))
            row["nsd_tolerances_mm"] = nsd_tolerances(r for r in rows if r["a"] == "model")
            if ref_dice is not None and method != REFERENCE_METHOD:
                w = paired_wilcoxon(model_values(rows, "dice"), ref_dice)
                row.update(p_vs_scratch=w["p_value"], median_diff_vs_scratch=w["median_difference"], n_pairs=w["n"])
            else:
                row.update(p_vs_scratch=math.nan, median_diff_vs_scratch=math.nan, n_pairs=0)
            out.append(row)
    return out


def multirater_table(rows_by_method: dict[str, list[dict]], metric: str = "dice") -> list[dict[str, Any]]:
    """Rows for one multi-reference test set: each expert pair, the inter-expert mean, and per method
    the model vs each expert and vs the experts' mean, the latter with a paired Wilcoxon test against
    inter-expert agreement (per case: mean model-vs-expert ``metric`` vs mean expert-pair ``metric``).

    Row: ``{group, comparison, method, stats (describe of metric), surface_dice, hd95_mm, p_vs_inter,
    median_diff_vs_inter, n_pairs, nsd_tolerances_mm}`` (the last: :func:`nsd_tolerances` of the rows used).
    """
    if not rows_by_method:
        return []
    any_rows = next(iter(rows_by_method.values()))
    rs = raters(any_rows)
    out: list[dict[str, Any]] = []

    def row(group, comparison, method, vals_fn, used) -> dict[str, Any]:
        return {"group": group, "comparison": comparison, "method": method,
                "stats": describe(vals_fn(metric).values()), "surface_dice": describe(vals_fn("surface_dice").values()),
                "hd95_mm": describe(vals_fn("hd95_mm").values()), "p_vs_inter": math.nan,
                "median_diff_vs_inter": math.nan, "n_pairs": 0, "nsd_tolerances_mm": nsd_tolerances(used)}

    pair_rows = [x for x in any_rows if x["a"] != "model"]
    for a, b in combinations(rs, 2):
        out.append(row("inter-expert", f"{a} vs {b}", "", lambda m, a=a, b=b: comparison_values(any_rows, f"{a}_vs_{b}", m),
                       [x for x in pair_rows if x["comparison"] == f"{a}_vs_{b}"]))
    out.append(row("inter-expert", "mean of expert pairs", "", lambda m: inter_rater_values(any_rows, m), pair_rows))
    inter = inter_rater_values(any_rows, metric)
    for method, rows in rows_by_method.items():
        for r in rs:
            out.append(row(method, f"model vs {r}", method, lambda m, r=r, rows=rows: comparison_values(rows, f"model_vs_{r}", m),
                           [x for x in rows if x["comparison"] == f"model_vs_{r}"]))
        mean_row = row(method, "model vs experts (mean)", method, lambda m, rows=rows: model_values(rows, m),
                       [x for x in rows if x["a"] == "model"])
        w = paired_wilcoxon(model_values(rows, metric), inter)
        mean_row.update(p_vs_inter=w["p_value"], median_diff_vs_inter=w["median_difference"], n_pairs=w["n"])
        out.append(mean_row)
    return out


def multirater_sites(per_case: dict[tuple[str, str], list[dict]], sites: list[str]) -> list[str]:
    """Test sets whose cases carry at least two references."""
    return [s for s in sites if any(len(raters(rows)) > 1 for (site, _), rows in per_case.items() if site == s)]


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_median_iqr(d: dict, digits: int = 3) -> str:
    return f"{fmt(d['median'], digits)} [{fmt(d['q1'], digits)}-{fmt(d['q3'], digits)}]"


def fmt_mean_sd(d: dict, digits: int = 3) -> str:
    return f"{fmt(d['mean'], digits)} ± {fmt(d['sd'], digits)}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def study_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the study table (for Markdown / HTML). The surface Dice header names
    the rows' tolerance; if the rows' tolerances differ, each surface Dice cell names its own."""
    tols = _union(r.get("nsd_tolerances_mm", [None]) for r in rows)
    head = ["Test set", "Method", "n"]
    for metric, label, _ in STUDY_METRICS:
        label = _label(metric, label, tols)
        head += [f"{label} median [IQR]", f"{label} mean ± sd"]
    head += ["Dice p vs scratch"]
    body = []
    for r in rows:
        cells = [r["site"], r["method"], str(r["n"])]
        for metric, _, digits in STUDY_METRICS:
            d = r[metric]
            extra = f" ({d['n_undefined']} undef.)" if d["n_undefined"] else ""
            if metric == "surface_dice" and len(tols) > 1:
                extra += f" [{_tol_text(r.get('nsd_tolerances_mm', [None]))}]"
            cells += [fmt_median_iqr(d, digits) + extra, fmt_mean_sd(d, digits)]
        cells.append("—" if r["method"] == REFERENCE_METHOD else fmt_p(r["p_vs_scratch"]))
        body.append(cells)
    return head, body


def _tol_text(tolerances: list[float | None]) -> str:
    return ", ".join("tolerance not recorded" if t is None else f"{t:g} mm" for t in tolerances)


def multirater_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of one multi-rater table; surface Dice labelled as in :func:`study_cells`."""
    tols = _union(r.get("nsd_tolerances_mm", [None]) for r in rows)
    head = ["Comparison", "n", "Dice median [IQR]", "Dice mean ± sd", f"{surface_dice_label(tols)} median [IQR]",
            "HD95 (mm) median [IQR]", "Δ Dice vs inter-expert (median)", "p vs inter-expert"]
    body = []
    for r in rows:
        label = f"{r['method']}: {r['comparison']}" if r["method"] else r["comparison"]
        nsd = fmt_median_iqr(r["surface_dice"]) + (f" [{_tol_text(r.get('nsd_tolerances_mm', [None]))}]" if len(tols) > 1 else "")
        body.append([label, str(r["stats"]["n"]), fmt_median_iqr(r["stats"]), fmt_mean_sd(r["stats"]),
                     nsd, fmt_median_iqr(r["hd95_mm"], 1),
                     fmt(r["median_diff_vs_inter"]) if r["n_pairs"] else "",
                     fmt_p(r["p_vs_inter"]) if r["n_pairs"] else ""])
    return head, body
