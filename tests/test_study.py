"""``plgg-fl study``: several training seeds plus a data-limited curve, in the real NVFlare simulator.

One tiny study (2 seeds x transfer + stepwise, a 1-case curve point) is shared by the end-to-end tests;
about 3-4 minutes on 2 CPU cores. The statistics are checked against numbers recomputed here from the
runs' own per-case files (numpy / scipy), not against the report's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import wilcoxon

from plgg_fl.cli import main
from plgg_fl.data.manifest import load_manifest
from plgg_fl.pipeline.config import ConfigError
from plgg_fl.pipeline.study import load_study, subset_keys
from plgg_fl.report.collect import load_run
from plgg_fl.report.tables import model_values

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "simulator_configs" / "tiny.yaml"


def _find(name: str) -> Path:
    p = Path(name)
    return p if p.is_file() else REPO / "simulator_configs" / f"{name}.yaml"


def _write(tmp: Path, data: dict) -> Path:
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    base = yaml.safe_load(TINY.read_text())
    base["cohort"]["dir"] = str(root / "cohort")
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = _write(root, {"name": "st", "base": str(root / "base.yaml"), "seeds": [0, 1], "methods": ["transfer", "stepwise"],
                        "curve": {"site": "cbtn", "train_cases": [1], "methods": ["stepwise"], "seeds": [0]}})
    rc = main(["study", "--config", str(cfg), "--out", str(root / "runs")])
    return {"rc": rc, "dir": root / "runs" / "st", "config": cfg, "root": root}


@pytest.mark.slow
def test_every_planned_run_finished_and_the_curve_reuses_the_same_seeds_stage1(tiny_study):
    assert tiny_study["rc"] == 0
    d = tiny_study["dir"]
    record = json.loads((d / "study.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["seed0", "seed1", "curve_n01_seed0"]
    assert all(r["state"] == "done" and r["wall_s"] > 0 for r in record["runs"])
    s1 = torch.load(d / "seed0" / "checkpoints" / "stage1_brats_pretrain.pt", weights_only=False)["model"]
    c1 = torch.load(d / "curve_n01_seed0" / "checkpoints" / "stage1_brats_pretrain.pt", weights_only=False)["model"]
    assert all(torch.equal(s1[k], c1[k]) for k in s1)
    stages = json.loads((d / "curve_n01_seed0" / "metrics.json").read_text())["stages"]
    assert stages[0]["reused"].endswith("seed0/checkpoints/stage1_brats_pretrain.pt")
    assert [s["sites"] for s in stages if s["job"] == "plgg_finetune"] == [["cbtn"]]  # the curve trains at cbtn only
    # the seed reaches the training: the two seeds' stepwise models differ
    a = torch.load(d / "seed0" / "checkpoints" / "stepwise_plgg_decoder.pt", weights_only=False)["model"]
    b = torch.load(d / "seed1" / "checkpoints" / "stepwise_plgg_decoder.pt", weights_only=False)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_curve_cohort_keeps_n_training_cases_and_every_test_case(tiny_study):
    d, base = tiny_study["dir"], tiny_study["root"] / "cohort"
    sub = load_manifest(d / "cohorts" / "cbtn_n01" / "cbtn" / "manifest.yaml")
    full = load_manifest(base / "cbtn" / "manifest.yaml")
    assert sub.counts() == {**full.counts(), "train": 1}
    assert [c.image for c in sub.split("test")] == [c.image for c in full.split("test")]
    assert load_manifest(d / "cohorts" / "cbtn_n01" / "dfci_bch" / "manifest.yaml").counts() == \
        load_manifest(base / "dfci_bch" / "manifest.yaml").counts()


@pytest.mark.slow
def test_pooled_medians_seed_medians_and_paired_tests_match_the_per_case_files(tiny_study):
    d = tiny_study["dir"]
    rep = json.loads((d / "report" / "data" / "study_report.json").read_text())
    assert (d / "report" / "study_report.html").is_file() and (d / "report" / "img" / "learning_curve.png").is_file()
    runs = [load_run(d / "seed0"), load_run(d / "seed1")]
    rows = {(r["site"], r["method"]): r for r in rep["methods"]}
    for site in ("cbtn", "dfci_bch"):
        per_seed = [model_values(r.per_case[(site, "stepwise")], "dice") for r in runs]
        row = rows[(site, "stepwise")]
        assert row["pooled"]["median"] == pytest.approx(np.median([v for s in per_seed for v in s.values()]))
        assert row["seed_medians"] == pytest.approx([np.median(list(s.values())) for s in per_seed])
        assert row["n_cases"] == len(per_seed[0]) and row["n_seeds"] == 2
        other = [model_values(r.per_case[(site, "transfer")], "dice") for r in runs]
        keys = sorted(per_seed[0])
        x = np.array([np.mean([s[k] for s in per_seed]) for k in keys])
        y = np.array([np.mean([s[k] for s in other]) for k in keys])
        (test,) = [p for p in rep["paired"] if p["site"] == site and (p["a"], p["b"]) == ("stepwise", "transfer")]
        assert test["n"] == len(keys)
        assert test["median_difference"] == pytest.approx(float(np.median(x - y)))
        if np.any(x != y):
            assert test["p_value"] == pytest.approx(float(wilcoxon(x, y).pvalue))
    assert ("dfci_bch", "inter-expert") in rows  # the multi-expert test set carries the experts' agreement
    assert {(q["site"], q["denominator"]) for q in rep["ratios"]} == {("dfci_bch", "inter-expert")}
    assert [(r["site"], r["method"], r["train_cases"]) for r in rep["curve"]] == [("cbtn", "stepwise", 1), ("dfci_bch", "stepwise", 1)]


@pytest.mark.slow
def test_a_second_invocation_keeps_the_finished_runs_and_report_rebuilds_the_study_report(tiny_study, capsys):
    d = tiny_study["dir"]
    before = (d / "seed0" / "metrics.json").stat().st_mtime_ns
    assert main(["study", "--config", str(tiny_study["config"]), "--out", str(d.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, kept") == 3
    assert (d / "seed0" / "metrics.json").stat().st_mtime_ns == before
    (d / "report" / "study_report.html").unlink()
    assert main(["report", str(d)]) == 0
    assert (d / "report" / "study_report.html").is_file()


def test_subsets_nest_and_a_subset_larger_than_the_split_is_an_error(tmp_path):
    m = tmp_path / "m.yaml"
    cases = [{"key": f"c{i:02d}", "split": "train", "image": f"i{i}.nii.gz", "masks": {"ref": f"m{i}.nii.gz"}} for i in range(8)]
    m.write_text(yaml.safe_dump({"schema_version": 1, "site": "cbtn", "data_root": ".", "cases": cases}))
    small, large = subset_keys(m, 3, 0), subset_keys(m, 6, 0)
    assert large[:3] == small and len(set(large)) == 6
    assert subset_keys(m, 3, 1) != small  # the subset seed picks the cases
    with pytest.raises(ConfigError, match="8 training cases"):
        subset_keys(m, 9, 0)


@pytest.mark.parametrize("data, match", [
    ({"base": "tiny", "color": 1}, "unknown field"),
    ({"seeds": [0]}, "'base'"),
    ({"base": "tiny", "seeds": []}, "seeds must be a non-empty list"),
    ({"base": "tiny", "methods": ["magic"]}, "unknown method"),
    ({"base": "tiny", "curve": {"train_cases": [0]}}, ">= 1"),
    ({"base": "tiny", "curve": {"train_cases": [5], "methods": ["pooled"]}}, "local_only and pooled"),
    ({"base": "tiny", "curve": {"train_cases": [5], "site": "cbtn", "train_sites": ["dfci_bch"]}}, "must be one of"),
])
def test_study_config_errors_name_the_field(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        load_study(_write(tmp_path, data), _find)


def test_the_bundled_study_plans_three_seeds_six_methods_and_nine_curve_runs(capsys):
    assert main(["study", "--config", "study", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 runs into" in out
    assert out.count("adult_only, local_only, scratch, transfer, stepwise, pooled") == 3
    assert out.count("stage 1 from") == 9 and "curve_n05_seed2" in out
