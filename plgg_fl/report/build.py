"""``build_report(run_dir)``: tables, plots, gallery and provenance of one run -> report.md + report.html.

Output (default ``RUN_DIR/report/``)::

    report.md, report.html     the report (the HTML embeds every image; it is the file to share)
    img/*.png                  figures and gallery overlays
    data/study_table.csv       the study table's numbers (one row per test set x method x metric; the
                               surface_dice rows name the tolerance used, nsd_tolerance_mm)
    data/multirater_table.csv  the multi-rater table's numbers
    data/dice_per_case.csv     the plotted per-case Dice and reference volume (ml)
    data/val_dice_rounds.csv   the plotted validation Dice per federated stage, round and site
    data/report.json           everything above plus provenance, machine-readable
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from plgg_fl.report import gallery, plots, provenance, tables
from plgg_fl.report.collect import ReportError, load_run
from plgg_fl.report.html import to_html, to_markdown

#: Boyd et al., Radiology: AI 2024 (doi 10.1148/ryai.230254) - real data, shown as a reference only.
PAPER = {
    "internal_stepwise": "0.88 [0.72-0.91]",
    "internal_scratch": "0.81 [0.56-0.89]",
    "external_vs_experts": "0.83",
    "inter_expert": "0.86",
    "acceptable": "80% of AI masks vs 65% of experts' masks rated clinically acceptable",
}
SITE_ROLE = {"cbtn": "internal hold-out", "dfci_bch": "external"}


def _role(site: str, multi: list[str], config: dict) -> str:
    role = SITE_ROLE.get(site) or ("external (multi-expert)" if site in multi else "test set")
    trained = {s for st in (config.get("stages") or {}).values() for s in (st or {}).get("sites", [])}
    return role + (" - also a training site in this run" if role.startswith("external") and site in trained else "")


def clean_json(x: Any) -> Any:
    """``x`` with every NaN float replaced by None (JSON has no NaN), dicts and lists walked."""
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _write_csvs(study: list[dict], multi: dict[str, list[dict]], data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    with (data / "study_table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "method", "reference", "metric", "n", "n_undefined", "median", "q1", "q3", "mean", "sd", "p_vs_scratch_dice",
                    "nsd_tolerance_mm"])
        for r in study:
            # the tolerance(s) of the surface_dice row ("" = not recorded; several joined by ";")
            tol = ";".join("" if t is None else f"{t:g}" for t in r.get("nsd_tolerances_mm", [None]))
            for m, _, _ in tables.STUDY_METRICS:
                d = r[m]
                w.writerow([r["site"], r["method"], r["reference"], m, d["n"], d["n_undefined"], d["median"], d["q1"], d["q3"],
                            d["mean"], d["sd"], r["p_vs_scratch"], tol if m == "surface_dice" else ""])
    with (data / "multirater_table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "method", "comparison", "n", "median", "q1", "q3", "mean", "sd", "median_diff_vs_inter", "p_vs_inter"])
        for site, rows in multi.items():
            for r in rows:
                d = r["stats"]
                w.writerow([site, r["method"], r["comparison"], d["n"], d["median"], d["q1"], d["q3"], d["mean"], d["sd"],
                            r["median_diff_vs_inter"], r["p_vs_inter"]])


def _write_plot_data(run, sites: list[str], methods: list[str], data: Path) -> None:
    """The plotted numbers: per-case Dice and reference volume (box plots, Dice vs volume) and the
    per-round validation Dice per site and federated stage."""
    with (data / "dice_per_case.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "method", "key", "dice", "vol_ref_ml"])
        for site in sites:
            for m in methods:
                rows = run.per_case.get((site, m))
                if rows:
                    d, v = tables.model_values(rows, "dice"), tables.model_values(rows, "vol_ref_ml")
                    w.writerows([site, m, k, d[k], v[k]] for k in sorted(d))
    with (data / "val_dice_rounds.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "job", "round", "site", "val_dice"])
        for st in run.round_metrics():
            for r in st["rounds"]:
                for site, ms in sorted(r["sites"].items()):
                    w.writerow([st["method"], st["job"], r["round"], site, ms.get("val_dice", "")])


def _cards(run, study: list[dict], multi: dict[str, list[dict]]) -> list[tuple]:
    by = {(r["site"], r["method"]): r for r in study}
    main = "stepwise" if any(m == "stepwise" for _, m in by) else (run.methods[0] if run.methods else "")
    cards = []
    for site in run.sites:
        r, s = by.get((site, main)), by.get((site, "scratch"))
        if r:
            sub = f"n={r['n']} vs {r['reference']}" + (f"; scratch {tables.fmt_median_iqr(s['dice'])}" if s else "")
            cards.append((f"This run · {site} · {main} Dice", tables.fmt_median_iqr(r["dice"]), sub, "ours"))
    for site, rows in multi.items():
        inter = [r for r in rows if r["comparison"] == "mean of expert pairs"]
        if inter:
            cards.append((f"This run · {site} · inter-expert Dice", tables.fmt_median_iqr(inter[0]["stats"]),
                          "synthetic experts (same run)", "ours"))
    cards += [
        ("Paper · internal · stepwise Dice", PAPER["internal_stepwise"], f"scratch {PAPER['internal_scratch']}; REAL data, not this run", "paper"),
        ("Paper · external · AI vs experts", PAPER["external_vs_experts"], f"inter-expert {PAPER['inter_expert']}; REAL data, not this run", "paper"),
    ]
    return cards


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, gallery_k: int = 3, printer=print,
                 sites: list[str] | None = None) -> dict[str, Any]:
    """Write the report; returns ``report.json``'s content (tables' numbers, figure paths, provenance).
    ``sites``: only these evaluation sites (a site reporting on its own results)."""
    run = load_run(run_dir, sites=sites)
    out = Path(out_dir) if out_dir else run.root / "report"
    img, data = out / "img", out / "data"
    img.mkdir(parents=True, exist_ok=True)
    if not run.per_case:
        raise ReportError(f"no per-case results found: {'; '.join(run.notes)}", run.root)
    methods, sites = run.methods, [s for s in run.sites if any(k[0] == s for k in run.per_case)]
    study = tables.study_table(run.per_case, sites, methods)
    multi_sites = tables.multirater_sites(run.per_case, sites)
    multi = {s: tables.multirater_table({m: run.per_case[(s, m)] for m in methods if (s, m) in run.per_case}) for s in multi_sites}
    figs = {
        "dice_boxplot": plots.dice_boxplot(run.per_case, sites, methods, img / "dice_boxplot.png"),
        "val_dice_rounds": plots.val_dice_rounds(run.round_metrics(), img / "val_dice_rounds.png"),
        "dice_vs_volume": plots.dice_vs_volume(run.per_case, sites, methods, img / "dice_vs_volume.png"),
    }
    best, items = gallery.render(run, img, k=gallery_k) if gallery_k > 0 else (None, [])
    prov = provenance.collect(run)
    _write_csvs(study, multi, data)
    _write_plot_data(run, sites, methods, data)

    doc: list[tuple] = [("h1", f"plgg-fl study report · run '{run.name}'"),
                        ("note", "Synthetic-data run unless the config names a real cohort. Blue cards: this run. "
                                 "Orange cards: the published figures of Boyd et al. 2024 (Radiology: AI, doi 10.1148/ryai.230254) "
                                 "on REAL, DIFFERENT data (nnU-Net, 1 mm T2) — a reference point, not a comparison of like with like."),
                        ("cards", _cards(run, study, multi))]
    h, b = tables.study_cells(study)
    roles = "; ".join(f"{s} = {_role(s, multi_sites, run.config)}" for s in sites)
    doc += [("h2", "Study table"),
            ("table", h, b, f"Per test set ({roles}) and method: per-case metrics vs the reference (cases with several experts: "
                            "mean over experts). Volume diff. = predicted - reference (ml). HD95 undefined when one mask is empty. "
                            "Surface Dice: normalised surface Dice, surfel-based (Nikolov et al. 2021), at the tolerance in its header. "
                            "p: two-sided paired Wilcoxon signed-rank test of per-case Dice against scratch, pairs = case keys within the test set "
                            "(n/a: scratch not run, or no non-zero paired difference).")]
    small = min((r["n"] for r in study), default=0)
    if small < 6:
        doc.append(("note", f"Small test sets (smallest n = {small}): a two-sided Wilcoxon signed-rank test cannot reach "
                            "p < 0.05 with fewer than 6 pairs, so the p-values here are bookkeeping, not evidence."))
    for site, rows in multi.items():
        h, b = tables.multirater_cells(rows)
        doc += [("h2", f"Multi-rater table · {site}"),
                ("table", h, b, "Each expert pair, and each method against each expert. 'p vs inter-expert': two-sided paired Wilcoxon "
                                "signed-rank test, per case, of the mean model-vs-expert Dice against the mean expert-vs-expert Dice "
                                "(Δ = median paired difference; negative = model agrees with experts less than they agree with each other).")]
    doc += [("h2", "Figures"),
            ("img", figs["dice_boxplot"], "Dice per case, per method and test set (box: median and IQR; whiskers 1.5 IQR; dots: cases)."),
            ("img", figs["val_dice_rounds"], "Validation Dice of the global model each site received, per round, per federated stage "
                                             "(site-reported, metrics.json)."),
            ("img", figs["dice_vs_volume"], "Per-case Dice against reference tumour volume (ml)."),
            ("h2", "Failure gallery" + (f" · worst cases of {best}" if best else ""))]
    doc.append(("note", "Best method = highest median Dice over all test cases. Cases re-predicted at the site with the method's "
                        "checkpoint (the evaluation keeps no masks); green = reference, red = prediction; "
                        "slices through the reference's centre of mass."))
    for it in items:
        if it.image:
            doc.append(("img", it.image,
                        f"{it.site} {it.key}: Dice {it.dice_csv:.3f} in evaluation, {it.dice_now:.3f} re-predicted. {it.note}".strip()))
        else:
            doc.append(("note", f"{it.site} {it.key}: not rendered - {it.note}"))
    vers = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    mach = prov["machine"]
    doc += [("h2", "Provenance"),
            ("table", ["Item", "Value"], [
                ["run folder", prov["run"]], ["run wall time (s)", str(prov["run_wall_s"])],
                ["seeds", ", ".join(f"{k}={v}" for k, v in prov["seeds"].items())],
                ["git commit", prov["git_commit"]], ["packages", vers],
                ["machine", f"{mach['platform']}; {mach['cpu']}; {mach['cpu_count']} CPUs; {mach['memory']}; Python {mach['python']}"],
            ], prov["note"]),
            ("pre", prov["config_yaml"], "config.yaml (resolved)"),
            ("note", "Per-case results stay at each site. In the simulator all site workspaces are on this machine; in a real federation "
                     "each site runs `plgg-fl report` on its own results and shares only the aggregate tables.")]
    if run.notes:
        doc.append(("note", "Collection notes: " + "; ".join(run.notes)))
    md = to_markdown(doc, img, out / "report.md")
    htm = to_html(doc, out / "report.html", f"plgg-fl report: {run.name}")
    result = {"run": str(run.root), "methods": methods, "sites": sites, "study_table": study, "multirater": multi,
              "figures": {k: str(v) for k, v in figs.items()},
              "gallery": {"method": best, "items": [vars(i) | {"image": str(i.image) if i.image else None} for i in items]},
              "per_case_csv": {f"{s}/{m}": str(p) for (s, m), p in run.per_case_paths.items()},
              "provenance": {k: v for k, v in prov.items() if k != "config_yaml"}, "markdown": str(md), "html": str(htm), "notes": run.notes}
    (data / "report.json").write_text(json.dumps(clean_json(result), indent=2, default=str), encoding="utf-8")
    printer(f"report: {htm} (and {md.name}); {len(study)} study rows, {len(multi)} multi-rater table(s), {len(items)} gallery case(s)")
    return result
