"""plgg-fl report on one small real run (tiny pipeline, shared by every test here): every table and plot
is there, and the numbers equal those recomputed here straight from the sites' per_case.csv files."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

pytestmark = pytest.mark.slow  # one real tiny pipeline run (NVFlare simulator): conftest.pipeline_tiny_run
METHODS = ["adult_only", "scratch", "stepwise"]


@pytest.fixture(scope="module")
def report_run(pipeline_tiny_run):
    """(run folder, report.json content) of the shared tiny run's report, gallery of 2 cases."""
    from plgg_fl.report.build import build_report

    run = pipeline_tiny_run["out"]
    assert sorted(pipeline_tiny_run["cfg"].methods) == METHODS
    return run, build_report(run, gallery_k=2, printer=lambda s: None)


def _per_case_csvs(run: Path) -> list[Path]:
    return sorted((run / "nvflare" / "evaluate").rglob("per_case.csv"))


def _model_by_case(path: Path, metric: str) -> dict[str, float]:
    """Independent re-reading: per case, mean over references of model_vs_* ``metric`` (NaN-aware)."""
    per = defaultdict(list)
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if r["a"] == "model":
                per[r["key"]].append(math.nan if r[metric] == "undefined" else float(r[metric]))
    return {k: float(np.nanmean(v)) if not all(map(math.isnan, v)) else math.nan for k, v in per.items()}


def _stats(vals) -> dict:
    v = np.array([x for x in vals if not math.isnan(x)])
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": med, "q1": q1, "q3": q3, "mean": v.mean(), "sd": v.std(ddof=1), "n": len(v)}


def test_per_case_rows_are_read_from_each_sites_workspace(report_run):
    run, rep = report_run
    assert len(_per_case_csvs(run)) == len(METHODS) * 2
    for key, path in rep["per_case_csv"].items():
        site, method = key.split("/")
        parts = Path(path).relative_to(run).parts
        assert parts[:2] == ("nvflare", "evaluate") and site in parts and "plgg_results" in parts
        assert method in METHODS


def test_methods_are_matched_to_the_scalars_each_site_sent(report_run):
    run, rep = report_run
    sent = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["evaluation"]
    for r in rep["study_table"]:
        if r["site"] == "cbtn":  # single reference: the sent median is the table's
            assert r["dice"]["median"] == pytest.approx(sent["cbtn"][r["method"]]["test/groups/model_vs_ref/dice/median"], abs=1e-12)


def test_study_table_equals_recomputation_from_per_case_csvs(report_run):
    run, rep = report_run
    md = Path(rep["markdown"]).read_text(encoding="utf-8")
    rows = {(r["site"], r["method"]): r for r in rep["study_table"]}
    assert set(rows) == {(s, m) for s in ("cbtn", "dfci_bch") for m in METHODS}
    for key, path in rep["per_case_csv"].items():
        site, method = key.split("/")
        row = rows[(site, method)]
        for metric, digits in (("dice", 3), ("hd95_mm", 1), ("surface_dice", 3), ("vol_diff_ml", 1)):
            want = _stats(_model_by_case(Path(path), metric).values())
            got = row[metric]
            for k in ("median", "q1", "q3", "mean", "sd"):
                assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (site, method, metric, k)
            assert got["n"] == want["n"]
            cell = f"{want['median']:.{digits}f} [{want['q1']:.{digits}f}-{want['q3']:.{digits}f}]"
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| {site} | {method} |"))
            assert cell in line and f"{want['mean']:.{digits}f} ± {want['sd']:.{digits}f}" in line
        if method != "scratch":  # paired Wilcoxon vs scratch, pairs = case keys
            a = _model_by_case(Path(path), "dice")
            b = _model_by_case(Path(rep["per_case_csv"][f"{site}/scratch"]), "dice")
            keys = sorted(a)
            assert keys == sorted(b)
            x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
            p = wilcoxon(x, y).pvalue if np.any(x != y) else math.nan
            assert row["p_vs_scratch"] == pytest.approx(p, nan_ok=True)


def test_multirater_table_equals_recomputation(report_run):
    run, rep = report_run
    table = rep["multirater"]["dfci_bch"]
    assert "cbtn" not in rep["multirater"]  # one reference there
    path = Path(rep["per_case_csv"]["dfci_bch/stepwise"])
    rows = list(csv.DictReader(path.open()))
    pairs = {"expert1 vs expert2", "expert1 vs expert3", "expert2 vs expert3"}
    by = {(r["method"], r["comparison"]): r for r in table}
    for pair in pairs:
        vals = [float(r["dice"]) for r in rows if r["comparison"] == pair.replace(" vs ", "_vs_")]
        assert by[("", pair)]["stats"]["median"] == pytest.approx(np.median(vals))
    inter = defaultdict(list)
    for r in rows:
        if r["a"] != "model":
            inter[r["key"]].append(float(r["dice"]))
    inter = {k: np.mean(v) for k, v in inter.items()}
    for m in METHODS:
        for e in ("expert1", "expert2", "expert3"):
            assert (m, f"model vs {e}") in by
        model = _model_by_case(Path(rep["per_case_csv"][f"dfci_bch/{m}"]), "dice")
        keys = sorted(model)
        p = wilcoxon([model[k] for k in keys], [inter[k] for k in keys]).pvalue
        assert by[(m, "model vs experts (mean)")]["p_vs_inter"] == pytest.approx(p)
    assert "Multi-rater table · dfci_bch" in Path(rep["markdown"]).read_text(encoding="utf-8")
    assert "Wilcoxon signed-rank" in Path(rep["markdown"]).read_text(encoding="utf-8")


def test_every_plot_is_written_and_embedded(report_run):
    run, rep = report_run
    html = Path(rep["html"]).read_text(encoding="utf-8")
    for name in ("dice_boxplot", "val_dice_rounds", "dice_vs_volume"):
        png = Path(rep["figures"][name])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    embedded = re.findall(r"src='data:image/png;base64,", html)
    assert len(embedded) == 3 + len([i for i in rep["gallery"]["items"] if i["image"]])
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # self-contained: nothing fetched
    assert "Study table" in html and "Failure gallery" in html and "Provenance" in html


def test_gallery_repredicts_the_evaluated_masks(report_run):
    run, rep = report_run
    g = rep["gallery"]
    assert g["method"] in METHODS and len(g["items"]) == 2
    for it in g["items"]:
        assert it["image"] and Path(it["image"]).is_file()
        assert it["dice_now"] == pytest.approx(it["dice_csv"], abs=1e-3)  # same checkpoint and settings as the evaluation


def test_paper_reference_and_provenance(report_run):
    run, rep = report_run
    html = Path(rep["html"]).read_text(encoding="utf-8")
    for fig in ("0.88 [0.72-0.91]", "0.81 [0.56-0.89]", "0.83", "0.86"):
        assert fig in html
    assert "REAL, DIFFERENT data" in html
    prov = rep["provenance"]
    assert prov["versions"]["torch"] in html and prov["seeds"]["cohort"] == 0
    assert "name: tiny" in html  # the config


def test_cli_report_and_bad_run_folder(report_run, tmp_path, capsys):
    from plgg_fl.cli import main

    run, _ = report_run
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--gallery", "0"]) == 0
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "data" / "study_table.csv").is_file()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # errors go to stderr, one line in plgg-fl's style
    assert "not found" in err and err.startswith("plgg-fl report: error: ")


def test_report_on_one_sites_own_results(report_run, tmp_path):
    from plgg_fl.report.build import build_report

    run, full = report_run
    rep = build_report(run, tmp_path, gallery_k=0, printer=lambda s: None, sites=["dfci_bch"])
    assert {r["site"] for r in rep["study_table"]} == {"dfci_bch"} and set(rep["multirater"]) == {"dfci_bch"}
    assert all(k.startswith("dfci_bch/") for k in rep["per_case_csv"])
    same = {(r["method"], r["dice"]["median"]) for r in full["study_table"] if r["site"] == "dfci_bch"}
    assert {(r["method"], r["dice"]["median"]) for r in rep["study_table"]} == same


def test_plotted_numbers_equal_per_case_csvs_and_site_reports(report_run):
    run, rep = report_run
    data = Path(rep["html"]).parent / "data"
    plotted = {(r["site"], r["method"], r["key"]): float(r["dice"]) for r in csv.DictReader((data / "dice_per_case.csv").open())}
    want = {(k.split("/")[0], k.split("/")[1], key): v for k, p in rep["per_case_csv"].items()
            for key, v in _model_by_case(Path(p), "dice").items()}
    assert plotted == pytest.approx(want)
    sent = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["stages"]
    rounds = list(csv.DictReader((data / "val_dice_rounds.csv").open()))
    assert {r["job"] for r in rounds} == {s["job"] for s in sent if s.get("rounds")}
    for s in sent:
        for rec in s.get("rounds", []):
            for site in rec["sites"]:
                v = {m["name"]: m["value"] for m in site["metrics"]}.get("val_dice")
                got = [r for r in rounds if r["method"] == s["method"] and r["job"] == s["job"]
                       and int(r["round"]) == rec["round"] and r["site"] == site["name"]]
                assert len(got) == 1 and (v is None or float(got[0]["val_dice"]) == pytest.approx(v))


def test_review_packet_from_the_run(report_run, tmp_path):
    from plgg_fl.cli import main

    run, _ = report_run
    out = tmp_path / "packet"
    assert main(["review-packet", "--run", str(run), "--method", "stepwise", "--site", "dfci_bch", "--out", str(out), "-n", "2"]) == 0
    key = list(csv.DictReader((tmp_path / "packet_KEY.csv").open()))
    assert len(key) == 8 and sum(r["source_type"] == "AI" for r in key) == 2
