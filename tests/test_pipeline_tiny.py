"""The whole stepwise pipeline on the tiny config, in the real NVFlare simulator (no mocks).

One run (stage 1, stepwise 2 -> 3, scratch 2 -> 3, evaluation of adult_only, scratch and stepwise, sends
recorded: conftest.pipeline_tiny_run) is shared by the tests of this module and test_report.py; about
2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from plgg_fl.data.manifest import load_manifest
from plgg_fl.engine import PlggUNet, encoder_decoder_keys

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


METHODS = ("adult_only", "scratch", "stepwise")


@pytest.fixture(scope="module")
def tiny_run(pipeline_tiny_run):
    assert sorted(pipeline_tiny_run["cfg"].methods) == list(METHODS)
    return pipeline_tiny_run


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_every_stage_produced_its_global_model(tiny_run):
    ck = tiny_run["out"] / "checkpoints"
    keys = set(PlggUNet(preset="tiny").state_dict())
    for name in ("stage1_brats_pretrain", "stepwise_plgg_finetune", "stepwise_plgg_decoder", "scratch_plgg_finetune",
                 "scratch_plgg_decoder"):
        state = _state(ck / f"{name}.pt")
        assert set(state) == keys, name
    jobs = [(s["method"], s["job"]) for s in tiny_run["metrics"]["stages"]]
    assert jobs == [("stage1", "brats_pretrain"), ("stepwise", "plgg_finetune"), ("stepwise", "plgg_decoder"),
                    ("scratch", "plgg_finetune"), ("scratch", "plgg_decoder"), ("evaluate", "plgg_evaluate")]
    for stage in tiny_run["metrics"]["stages"][:-1]:
        sites = {s["name"] for s in stage["rounds"][0]["sites"]}
        assert sites == set(stage["sites"])  # every pinned site reported in the round


def test_stage3_keeps_the_stage2_encoder_bit_identical_and_changes_the_decoder(tiny_run):
    ck = tiny_run["out"] / "checkpoints"
    s2, s3 = _state(ck / "stepwise_plgg_finetune.pt"), _state(ck / "stepwise_plgg_decoder.pt")
    enc, dec = encoder_decoder_keys(PlggUNet(preset="tiny"))
    assert all(torch.equal(s2[k], s3[k]) for k in enc)
    assert any(not torch.equal(s2[k], s3[k]) for k in dec)


def test_evaluation_internal_and_external_per_expert(tiny_run):
    """Each site scores every model against each of its references and sends summaries per comparison
    (the tiny test sets hold 2 cases; this run's sites allow summaries of 1 or more); the per-case rows
    stay at the site, filed under the model's name."""
    ev = tiny_run["metrics"]["evaluation"]
    for method in METHODS:
        cbtn = ev["cbtn"][method]
        assert cbtn["test/groups/model_vs_ref/dice/n"] == 2
        assert 0.0 <= cbtn["test/groups/model_vs_ref/dice/median"] <= 1.0
        dfci = ev["dfci_bch"][method]
        for expert in ("expert1", "expert2", "expert3"):
            assert dfci[f"test/groups/model_vs_{expert}/dice/n"] == 2
            assert 0.0 <= dfci[f"test/groups/model_vs_{expert}/dice/median"] <= 1.0
        assert "test/groups/inter_rater/dice/n" in dfci
    out = tiny_run["out"]
    for site in ("cbtn", "dfci_bch"):  # per-case rows stay at the site, labelled by model name
        labels = [json.loads(p.read_text(encoding="utf-8"))["model"] for p in (out / "nvflare" / "evaluate").glob(f"*/{site}/**/model.json")]
        assert sorted(labels) == list(METHODS)
        found = (out / "nvflare" / "evaluate").glob(f"*/{site}/**/plgg_results/*/*/test/per_case.csv")
        assert sorted(p.parent.parent.name for p in found) == list(METHODS)  # filed under the model's name
    assert (out / "metrics.csv").read_text(encoding="utf-8").count("\n") > 10
    table = (out / "summary.txt").read_text(encoding="utf-8")
    assert "dfci_bch: model_vs_expert2" in table
    assert re.search(r"^stepwise +\d\.\d{3} \[\d\.\d{3}-\d\.\d{3}\]", table, re.M), table


def _records(tiny_run, job: str) -> list[dict]:
    recs = []
    for f in sorted((tiny_run["out"] / "sends" / job).glob("*.jsonl")):
        recs += [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()]
    return recs


def _forbidden_strings(tiny_run) -> list[str]:
    """Case keys and data locations that must never leave a site."""
    cfg = tiny_run["cfg"]
    out = [str(cfg.cohort_dir.resolve()), ".nii"]
    for site in ("brats", "cbtn", "dfci_bch"):
        out += [c.key for c in load_manifest(cfg.cohort_dir / site / "manifest.yaml").cases]
    return out


def test_what_leaves_a_site(tiny_run):
    model = PlggUNet(preset="tiny")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    _, dec = encoder_decoder_keys(model)
    forbidden = _forbidden_strings(tiny_run)
    expected = {"brats_pretrain": set(shapes), "plgg_finetune": set(shapes), "plgg_decoder": set(dec)}
    for job, keys in expected.items():
        recs = [r for r in _records(tiny_run, job) if r["task"] == "train"]
        assert {r["site"] for r in recs} == set(
            tiny_run["cfg"].stages[{"brats_pretrain": "pretrain", "plgg_finetune": "finetune", "plgg_decoder": "decoder"}[job]].sites)
        for r in recs:
            assert r["return_code"] == "OK" and r["data_kind"] in ("WEIGHTS", "WEIGHT_DIFF")
            assert set(r["data"]) == keys, job  # state-dict keys only; the decoder alone in stage 3
            for k, d in r["data"].items():
                assert d["shape"] == shapes[k]  # exactly the parameter's shape: nothing image-shaped
            for name, m in r["meta"]["initial_metrics"]["items"].items():
                assert m["type"] == "float", name  # scalar metrics only
    evals = _records(tiny_run, "plgg_evaluate")
    assert {r["site"] for r in evals} == {"cbtn", "dfci_bch"} and len(evals) == 6  # 2 sites x 3 models
    for r in evals:
        assert r["data_kind"] == "METRICS"
        assert all(v["type"] == "float" for v in r["data"].values())
    for job in (*expected, "plgg_evaluate"):
        text = "\n".join(json.dumps(r) for r in _records(tiny_run, job))
        hits = [s for s in forbidden if s in text]
        assert not hits, f"{job}: {hits[:5]} left a site"


def test_client_job_configs_hold_no_path_or_case_key(tiny_run):
    forbidden = _forbidden_strings(tiny_run)
    configs = list((tiny_run["out"] / "nvflare").rglob("config_fed_client.json"))
    assert configs
    for cfg in configs:
        text = cfg.read_text(encoding="utf-8")
        assert not re.search(r'"/[^"]*"', text), f"absolute path in {cfg}"
        assert not [s for s in forbidden if s in text], cfg


def test_progress_lines_name_stage_site_round(tiny_run):
    text = "\n".join(tiny_run["lines"])
    assert "stepwise: plgg_decoder at cbtn, dfci_bch" in text
    assert re.search(r"\[cbtn\] round 0: val_dice\(global\)=\d\.\d+ train_loss=", text)



def test_the_run_ends_with_its_table_and_report_command_and_evaluation_names_its_models(tiny_run):
    lines, text = tiny_run["lines"], "\n".join(tiny_run["lines"])
    for site in ("cbtn", "dfci_bch"):
        for method in METHODS:
            assert f"[{site}] evaluation: scoring model '{method}' on test" in text
    assert "evaluation of 3 model(s) (adult_only, stepwise, scratch) at cbtn, dfci_bch" in text
    table = text[text.index("Dice, median [IQR], per method and test set"):text.index("\nstudy report")]
    assert max(len(ln) for ln in table.splitlines()) <= 100
    assert [ln.split("  ")[0] for ln in table.splitlines() if ln.startswith((*METHODS, "inter-expert"))] \
        == ["adult_only", "stepwise", "scratch", "inter-expert agreement"]
    assert lines[-1].strip() == f"study report (tables, plots, failure gallery): plgg-fl report {tiny_run['out']}"
    assert json.loads((tiny_run["out"] / "status.json").read_text(encoding="utf-8"))["state"] == "done"


def test_method_models_are_engine_checkpoints_that_export_and_predict(tiny_run, tmp_path):
    """runs/<name>/models/<method>.pt: the federated global weights with preset, preprocessing and
    provenance, usable by `plgg-fl export` and `plgg-fl predict` without the run around it."""
    import nibabel as nib
    import numpy as np

    from plgg_fl.engine import load_checkpoint
    from plgg_fl.predict.export import export_model
    from plgg_fl.predict.run import PredictOptions, predict_inputs

    out = tiny_run["out"]
    assert tiny_run["metrics"]["models"] == {m: f"models/{m}.pt" for m in METHODS}
    model, cfg, meta = load_checkpoint(out / "models" / "stepwise.pt")
    final = _state(out / "checkpoints" / "stepwise_plgg_decoder.pt")
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
    assert cfg.preset == "tiny" and tuple(cfg.spacing_mm) == tuple(tiny_run["cfg"].stages["decoder"].options.train["spacing_mm"])
    assert [j["job"] for j in meta["jobs"]] == ["brats_pretrain", "plgg_finetune", "plgg_decoder"]
    assert set(meta["test_metrics"]) == {"cbtn", "dfci_bch"}
    assert set(meta["training_data"]) == {"brats", "cbtn", "dfci_bch"}  # the sites of the three jobs
    assert all(v.startswith("synthetic: plgg_fl.synth") and "'tiny' cohort" in v for v in meta["training_data"].values())

    case = load_manifest(tiny_run["cfg"].cohort_dir / "cbtn" / "manifest.yaml").split("test")[0]
    exported = export_model(out / "models" / "stepwise.pt", tmp_path / "export")
    summary = predict_inputs([case.image], exported, tmp_path / "preds", PredictOptions(progress=False))
    assert summary.exit_code == 0
    mask = nib.load(next((tmp_path / "preds").glob("*_mask.nii.gz")))
    image = nib.load(case.image)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)


def test_sites_stream_round_metrics_to_server_tensorboard(tiny_run):
    """Experiment tracking: each pinned site's per-round train loss and val Dice reach the server's
    TensorBoard logs (NVFlare analytics events), copied to runs/<name>/tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tiny_run["out"] / "tensorboard"
    for stage in tiny_run["metrics"]["stages"][:-1]:
        method = stage["method"]
        for site in stage["sites"]:
            acc = EventAccumulator(str(tb / method / stage["job"] / site))
            acc.Reload()
            loss = acc.Scalars("train_loss")
            sent = [m["value"] for r in stage["rounds"] for s in r["sites"] if s["name"] == site
                    for m in s["metrics"] if m["name"] == "train_loss"]
            assert sent, (stage["job"], site)
            assert [e.step for e in loss] == list(range(len(sent)))
            assert [e.value for e in loss] == pytest.approx(sent, rel=1e-5)  # TB stores float32


def test_sites_poll_for_the_next_task_at_the_jobs_interval(tiny_run):
    """The jobs' task_request_interval (0.5 s, not NVFlare's 2 s) reaches every site's task loop."""
    from plgg_fl.fl.recipes import TASK_REQUEST_INTERVAL_S

    logs = tiny_run["out"] / "logs"
    for stage in tiny_run["metrics"]["stages"][:-1]:
        method = stage["method"]
        for site in stage["sites"]:
            text = (logs / method / stage["job"] / f"{site}.log").read_text(encoding="utf-8", errors="replace")
            intervals = re.findall(r"Finished one task run for client: \S+ interval: ([\d.]+)", text)
            assert len(intervals) == len(stage["rounds"]), (stage["job"], site)
            assert {float(i) for i in intervals} == {TASK_REQUEST_INTERVAL_S}
