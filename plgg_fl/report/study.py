"""The study report: statistics over a study's runs (:mod:`plgg_fl.pipeline.study`) -> ``study_report.html``.

Output (default ``STUDY_DIR/report/``)::

    study_report.md, study_report.html   the report (the HTML embeds its figure)
    img/learning_curve.png               median Dice against training cases, per method and test set
    data/study_methods.csv               per test set and method: pooled median [IQR], each seed's median
    data/study_curve.csv                 per test set, method and training-set size: the same
    data/study_report.json               everything above, machine-readable

Statistics (per-case Dice as in :mod:`plgg_fl.report.tables`: against the one reference, or the mean over
the experts where a case has several):

- **Pooled over seeds**: the per-case Dice of every seed's model, pooled (n = cases x seeds), median [IQR].
- **Seed-to-seed spread**: each seed's median over the test cases; their range and sd.
- **Paired tests**: two-sided Wilcoxon signed-rank test, pairs = test cases, each case's Dice averaged
  over the seeds first (so the pairs are independent cases, not case x seed replicates).
- **Ratios**: federated stepwise / pooled (median Dice, per test set) and stepwise / inter-expert on the
  multi-expert (external) test set, from the pooled medians, with the per-seed range. The paper's
  ratios (Boyd et al. 2024, real data) are shown beside them as targets, not as a comparison.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from plgg_fl.engine.metrics import describe, paired_wilcoxon
from plgg_fl.pipeline.study import STUDY_FILE
from plgg_fl.report import plots, provenance, tables
from plgg_fl.report.build import clean_json
from plgg_fl.report.collect import ReportError, Run, load_run
from plgg_fl.report.html import to_html, to_markdown

#: the paper's ratios, as targets (Boyd et al., Radiology: AI 2024; real data)
TARGETS = {"federated_vs_pooled": 0.98, "external_vs_inter_expert": 0.97}
COMPARISONS = (("stepwise", "scratch"), ("stepwise", "transfer"))


def collect(study_dir: str | Path) -> tuple[dict, dict[str, Run]]:
    """``(study.json, {run name: Run})`` of a finished study. Raises :class:`ReportError` when the study or
    one of its runs is unfinished."""
    root = Path(study_dir).resolve()
    f = root / STUDY_FILE
    if not f.is_file():
        raise ReportError(f"not a study folder (no {STUDY_FILE}; `plgg-fl study` writes it)", root)
    record = json.loads(f.read_text(encoding="utf-8"))
    unfinished = [r["name"] for r in record.get("runs", []) if r.get("state") != "done"]
    if unfinished:
        raise ReportError(f"runs not finished: {', '.join(unfinished)}; rerun `plgg-fl study` to finish them", root)
    return record, {r["name"]: load_run(root / r["folder"]) for r in record["runs"]}


def _dice(run: Run, site: str, method: str) -> dict[str, float]:
    rows = run.per_case.get((site, method))
    return tables.model_values(rows, "dice") if rows else {}


def _spread(medians: list[float]) -> dict[str, float]:
    ok = [m for m in medians if not math.isnan(m)]
    if not ok:
        return {"min": math.nan, "max": math.nan, "range": math.nan, "sd": math.nan}
    return {"min": min(ok), "max": max(ok), "range": max(ok) - min(ok), "sd": float(np.std(ok, ddof=1)) if len(ok) > 1 else math.nan}


def _row(site: str, method: str, per_seed: list[dict[str, float]], **extra) -> dict[str, Any]:
    """``per_seed``: one dict per seed, in seed order (empty where the seed lacks the method: its
    median is NaN, so per-seed lists stay aligned across methods)."""
    pooled = describe(v for d in per_seed for v in d.values())
    medians = [describe(d.values())["median"] if d else math.nan for d in per_seed]
    return {"site": site, "method": method, "n_cases": max((len(d) for d in per_seed), default=0), "n_seeds": sum(bool(d) for d in per_seed),
            "pooled": pooled, "seed_medians": medians, "spread": _spread(medians), **extra}


def _case_means(per_seed: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in per_seed for k in d})
    return {k: float(np.nanmean([d[k] for d in per_seed if k in d])) for k in keys}


def method_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per test set and method (in the runs' method order): pooled over seeds, and each seed's median.
    Multi-expert test sets add an ``inter-expert`` row (the experts' agreement; identical in every seed)."""
    out = []
    sites = runs[0].sites
    methods = list(dict.fromkeys(m for r in runs for m in r.methods))
    for site in sites:
        for m in methods:
            per_seed = [_dice(r, site, m) for r in runs]
            if any(per_seed):
                out.append(_row(site, m, per_seed))
        multi = tables.multirater_sites(runs[0].per_case, [site])
        if multi:
            rows = next(rows for (s, _), rows in runs[0].per_case.items() if s == site)
            inter = tables.inter_rater_values(rows, "dice")  # the same in every seed: one value, repeated
            out.append({**_row(site, "inter-expert", [inter], reference=True), "seed_medians_all": True})
    return out


def paired_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Paired Wilcoxon per test set for each of :data:`COMPARISONS` both runs hold (case Dice averaged
    over seeds), plus each seed's own p-value."""
    out = []
    for site in runs[0].sites:
        for a, b in COMPARISONS:
            pa, pb = [_dice(r, site, a) for r in runs], [_dice(r, site, b) for r in runs]
            if not all(pa) or not all(pb):
                continue
            w = paired_wilcoxon(_case_means(pa), _case_means(pb))
            per_seed = [paired_wilcoxon(x, y)["p_value"] for x, y in zip(pa, pb)]
            better = sum(describe(x.values())["median"] > describe(y.values())["median"] for x, y in zip(pa, pb))
            out.append({"site": site, "a": a, "b": b, **w, "seed_p_values": per_seed, "seeds_a_better": better, "n_seeds": len(runs)})
    return out


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stepwise / pooled per test set, and stepwise / inter-expert on multi-expert test sets (pooled
    medians; per-seed ratios from the seed medians)."""
    by = {(r["site"], r["method"]): r for r in rows}
    out = []
    for (site, method), r in by.items():
        if method != "stepwise":
            continue
        for other, what in (("pooled", "federated_vs_pooled"), ("inter-expert", "external_vs_inter_expert")):
            o = by.get((site, other))
            if not o:
                continue
            ratio = r["pooled"]["median"] / o["pooled"]["median"] if o["pooled"]["median"] else math.nan
            om = o["seed_medians"] * len(r["seed_medians"]) if o.get("seed_medians_all") else o["seed_medians"]
            seeds = [a / b if b and not math.isnan(b) else math.nan for a, b in zip(r["seed_medians"], om)]
            out.append({"site": site, "what": what, "numerator": "stepwise", "denominator": other, "ratio": ratio,
                        "seed_ratios": seeds, "target": TARGETS[what], "meets_target": bool(ratio >= TARGETS[what])})
    return out


def curve_rows(record: dict, runs: dict[str, Run]) -> list[dict[str, Any]]:
    """Per test set, method and training-set size: pooled over the curve's seeds."""
    curve = [r for r in record["runs"] if r["kind"] == "curve"]
    out = []
    for n in sorted({r["train_cases"] for r in curve}):
        group = [runs[r["name"]] for r in curve if r["train_cases"] == n]
        for site in group[0].sites:
            for m in record["curve"]["methods"]:
                per_seed = [_dice(g, site, m) for g in group]
                if any(per_seed):
                    out.append(_row(site, m, per_seed, train_cases=n))
    return out


def _fmt_seeds(values: list[float]) -> str:
    return " / ".join(tables.fmt(v) for v in values)


def _write_csv(path: Path, rows: list[dict], extra: tuple[str, ...] = ()) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "method", *extra, "n_cases", "n_seeds", "median", "q1", "q3", "seed_medians", "seed_range", "seed_sd"])
        for r in rows:
            p, s = r["pooled"], r["spread"]
            w.writerow([r["site"], r["method"], *(r[e] for e in extra), r["n_cases"], r["n_seeds"], p["median"], p["q1"], p["q3"],
                        ";".join(f"{m:.4f}" for m in r["seed_medians"]), s["range"], s["sd"]])


def build_study_report(study_dir: str | Path, out_dir: str | Path | None = None, printer=print) -> dict[str, Any]:
    """Write the study report; returns ``study_report.json``'s content."""
    record, runs = collect(study_dir)
    root = Path(study_dir).resolve()
    out = Path(out_dir) if out_dir else root / "report"
    img, data = out / "img", out / "data"
    img.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    main = [runs[r["name"]] for r in record["runs"] if r["kind"] == "seeds"]
    if not main:
        raise ReportError("the study has no per-seed runs", root)
    rows, paired = method_rows(main), paired_rows(main)
    ratios, curve = ratio_rows(rows), curve_rows(record, runs) if record.get("curve") else []
    _write_csv(data / "study_methods.csv", rows)
    if curve:
        _write_csv(data / "study_curve.csv", curve, ("train_cases",))
    seeds = ", ".join(str(s) for s in record["seeds"])
    wall = record.get("wall_s")
    doc: list[tuple] = [
        ("h1", f"plgg-fl study report · '{record['name']}'"),
        ("note", f"Synthetic cohort unless the base config names a real one. Base config {record['base']}; training seeds {seeds}; "
                 f"{len(record['runs'])} pipeline runs; study wall time {wall / 60:.1f} min." if wall else
                 f"Base config {record['base']}; training seeds {seeds}."),
        ("h2", "Methods, pooled over seeds"),
    ]
    head = ["Test set", "Method", "cases x seeds", "Dice median [IQR] (pooled)", "per-seed medians", "seed range", "seed sd"]
    body = [[r["site"], r["method"], f"{r['n_cases']} x {r['n_seeds']}", tables.fmt_median_iqr(r["pooled"]),
             _fmt_seeds(r["seed_medians"]), tables.fmt(r["spread"]["range"]), tables.fmt(r["spread"]["sd"])] for r in rows]
    doc.append(("table", head, body, "Per-case Dice of every seed's model pooled (median [IQR]); per-seed medians in seed order. "
                                     "Multi-expert test sets: Dice against the mean of the experts; 'inter-expert' is the experts' "
                                     "agreement (the same in every seed)."))
    doc.append(("h2", "Paired tests (per case, Dice averaged over seeds)"))
    head = ["Test set", "Comparison", "n cases", "median paired difference", "p (Wilcoxon)", "per-seed p", "seeds where A's median is higher"]
    body = [[p["site"], f"{p['a']} vs {p['b']}", str(p["n"]), tables.fmt(p["median_difference"]), tables.fmt_p(p["p_value"]),
             " / ".join(tables.fmt_p(x) for x in p["seed_p_values"]), f"{p['seeds_a_better']} of {p['n_seeds']}"] for p in paired]
    doc.append(("table", head, body, "Two-sided Wilcoxon signed-rank test; positive difference = A better. With fewer than 6 cases a "
                                     "two-sided test cannot reach p < 0.05."))
    doc.append(("h2", "The paper's ratios"))
    head = ["Test set", "Ratio", "pooled medians", "per seed", "paper's ratio (target)", "meets"]
    body = [[q["site"], f"{q['numerator']} / {q['denominator']}", tables.fmt(q["ratio"]), _fmt_seeds(q["seed_ratios"]),
             f">= {q['target']:.2f}", "yes" if q["meets_target"] else "no"] for q in ratios]
    doc.append(("table", head, body, "Boyd et al. 2024 (real data): federated stepwise within 0.98 x pooled; external stepwise "
                                     "0.83 vs inter-expert 0.86. Targets from the paper, figures from this study."))
    fig = None
    if curve:
        c = record["curve"]
        fig = plots.learning_curve(curve, img / "learning_curve.png")
        doc.append(("h2", f"Data-limited curve · {c['site']} training cases"))
        head = ["Test set", "Method", f"{c['site']} train cases", "cases x seeds", "Dice median [IQR] (pooled)", "per-seed medians"]
        body = [[r["site"], r["method"], str(r["train_cases"]), f"{r['n_cases']} x {r['n_seeds']}", tables.fmt_median_iqr(r["pooled"]),
                 _fmt_seeds(r["seed_medians"])] for r in curve]
        doc.append(("table", head, body, f"Stages 2 and 3 at {', '.join(c['train_sites'])} only, on nested subsets of "
                                         f"{c['site']}'s training split (subset seed {c['subset_seed']}); each run starts from the "
                                         "stage-1 model of the same seed's main run; the same step budget at every size."))
        doc.append(("img", fig, "Median Dice (pooled over seeds) against the number of training cases; bars: range of the per-seed medians."))
    prov = provenance.collect(main[0])
    mach = prov["machine"]
    run_rows = [[r["name"], str(r["seed"]), str(r.get("train_cases") or "all"), ", ".join(r["methods"]),
                 tables.fmt(r.get("wall_s", math.nan), 0)] for r in record["runs"]]
    doc += [("h2", "Runs"), ("table", ["Run", "Seed", "Train cases", "Methods", "Wall (s)"], run_rows, ""),
            ("h2", "Provenance"),
            ("table", ["Item", "Value"], [["git commit", prov["git_commit"]],
                                          ["packages", ", ".join(f"{k} {v}" for k, v in prov["versions"].items())],
                                          ["machine", f"{mach['platform']}; {mach['cpu']}; {mach['cpu_count']} CPUs; {mach['memory']}"]], ""),
            ("pre", prov["config_yaml"], "base config (resolved, seed 0 run)")]
    md = to_markdown(doc, img, out / "study_report.md")
    htm = to_html(doc, out / "study_report.html", f"plgg-fl study: {record['name']}")
    result = {"study": str(root), "methods": rows, "paired": paired, "ratios": ratios, "curve": curve,
              "figure": str(fig) if fig else None, "html": str(htm), "markdown": str(md), "wall_s": wall}
    (data / "study_report.json").write_text(json.dumps(clean_json(result), indent=2, default=str), encoding="utf-8")
    printer(f"study report: {htm}")
    return result


def summary_text(result: dict[str, Any]) -> str:
    """The study's headline tables as plain text (printed at the end of ``plgg-fl study``)."""
    lines = ["Dice, median [IQR] pooled over seeds; per-seed medians", ""]
    for r in result["methods"]:
        lines.append(f"{r['site']:9s} {r['method']:22s} {tables.fmt_median_iqr(r['pooled'])}  seeds {_fmt_seeds(r['seed_medians'])}")
    lines += ["", "paired Wilcoxon (cases, Dice averaged over seeds)"]
    for p in result["paired"]:
        lines.append(f"{p['site']:9s} {p['a']} vs {p['b']}: median diff {tables.fmt(p['median_difference'])}, "
                     f"p {tables.fmt_p(p['p_value'])} (n={p['n']})")
    lines += ["", "ratios"]
    for q in result["ratios"]:
        lines.append(f"{q['site']:9s} {q['numerator']} / {q['denominator']}: {tables.fmt(q['ratio'])} (paper >= {q['target']:.2f})")
    if result["curve"]:
        lines += ["", "data-limited curve (median Dice pooled over seeds)"]
        for r in result["curve"]:
            lines.append(f"{r['site']:9s} {r['method']:10s} n={r['train_cases']:3d}  {tables.fmt_median_iqr(r['pooled'])}")
    return "\n".join(lines)
