"""Fast checks of the FL layer: site lookup, job arguments, result scrubbing, committed jobs/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from plgg_fl.fl import recipes
from plgg_fl.pipeline.jobs import diff_trees, export_jobs
from plgg_fl.fl.client import scalar_metrics
from plgg_fl.fl.site import SiteConfigError, manifest_env_var, resolve_site_config

REPO = Path(__file__).resolve().parents[1]


def test_site_config_lookup_order(tmp_path, monkeypatch):
    for var in ("PLGG_FL_MANIFEST_DFCI_BCH", "PLGG_FL_SITE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SiteConfigError) as err:
        resolve_site_config("dfci_bch", workspace=tmp_path)
    assert "PLGG_FL_MANIFEST_DFCI_BCH" in str(err.value) and "site_config.yaml" in str(err.value)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "site_config.yaml").write_text("manifest: data/manifest.yaml\ndevice: cpu\n", encoding="utf-8")
    sc = resolve_site_config("dfci_bch", workspace=tmp_path)
    assert sc.manifest == (tmp_path / "local" / "data" / "manifest.yaml").resolve() and sc.device == "cpu"
    other = tmp_path / "other.yaml"
    other.write_text("manifest: /srv/m.yaml\n", encoding="utf-8")
    monkeypatch.setenv("PLGG_FL_SITE_CONFIG", str(other))
    assert resolve_site_config("dfci_bch", workspace=tmp_path).manifest == Path("/srv/m.yaml")
    monkeypatch.setenv(manifest_env_var("dfci_bch"), "/x/manifest.yaml")
    assert resolve_site_config("dfci_bch", workspace=tmp_path).manifest == Path("/x/manifest.yaml")
    other.write_text("manifest: a.yaml\nsecret: 1\n", encoding="utf-8")
    monkeypatch.delenv(manifest_env_var("dfci_bch"))
    with pytest.raises(SiteConfigError, match="unknown field"):
        resolve_site_config("dfci_bch")


def test_site_templates_parse():
    for site in ("brats", "cbtn", "dfci_bch"):
        sc = resolve_site_config(site, workspace=REPO / "sites" / site)
        assert sc.manifest.name == "manifest.yaml"


def test_scalar_metrics_keep_finite_numbers_only():
    summary = {"groups": {"model_vs_ref": {"dice": {"median": 0.5, "n": 3, "sd": float("nan")}}},
               "empty_mask_policy": "text", "flag": True, "per_case": [1, 2]}
    assert scalar_metrics(summary, prefix="test/") == {
        "test/groups/model_vs_ref/dice/median": 0.5, "test/groups/model_vs_ref/dice/n": 3.0}


def test_client_args_are_plain_values():
    opts = recipes.StageOptions(preset="tiny", local_steps=3, train={"patch_size": [32, 32, 32], "lr": 0.01})
    args = recipes.client_args("decoder", opts)
    assert args == ("--stage decoder --local-steps 3 --send full --set lr=0.01 "
                    "--set patch_size=[32,32,32] --set preset=tiny")
    with pytest.raises(ValueError, match="no spaces"):
        recipes.client_args("full", recipes.StageOptions(train={"optimizer": "sgd nesterov"}))


def test_recipes_refuse_relative_server_paths():
    with pytest.raises(ValueError, match="absolute"):
        recipes.finetune_recipe(recipes.StageOptions(preset="tiny"), initial_ckpt="model.pt")
    with pytest.raises(ValueError, match="absolute"):
        recipes.evaluate_recipe("tiny", models={"m": "models/model.pt"})
    recipes.evaluate_recipe("tiny", models={"m": "model.pt"})  # a bare name: shipped in the job's server app


def test_committed_jobs_match_a_fresh_export(tmp_path):
    export_jobs(tmp_path, REPO / "simulator_configs" / "paper.yaml")
    for name in recipes.JOB_NAMES:
        assert (REPO / "jobs" / name / "meta.json").is_file(), f"jobs/{name} missing: run `plgg-fl jobs export`"
        drift = diff_trees(tmp_path / name, REPO / "jobs" / name)
        assert not drift, f"jobs/{name} drifted from a fresh export ({drift[:5]}): run `plgg-fl jobs export`"


def test_committed_jobs_hold_no_paths():
    for cfg in (REPO / "jobs").rglob("*.json"):
        text = cfg.read_text(encoding="utf-8")
        assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', text), f"absolute path in {cfg}"
        assert "source_ckpt_file_full_name" not in text and ".nii" not in text, cfg
    server = json.loads((REPO / "jobs" / "plgg_decoder" / "app_server" / "config" / "config_fed_server.json").read_text(encoding="utf-8"))
    wf = server["workflows"][0]
    assert wf["path"] == "plgg_fl.fl.controller.PinnedFedAvg" and wf["args"]["sites"] == ["cbtn"]
    client = (REPO / "jobs" / "plgg_decoder" / "app_cbtn" / "config" / "config_fed_client.json").read_text(encoding="utf-8")
    assert "--stage decoder" in client and "plgg_fl.fl.filters.SendRecorder" in client


def test_committed_jobs_deploy_only_to_the_sites_that_take_part():
    """No idle job process at a site a stage does not use: the deploy map names the pinned sites."""
    expect = {"brats_pretrain": ["brats"], "plgg_finetune": ["cbtn"], "plgg_decoder": ["cbtn"], "plgg_evaluate": ["cbtn", "dfci_bch"]}
    for job, sites in expect.items():
        meta = json.loads((REPO / "jobs" / job / "meta.json").read_text(encoding="utf-8"))
        targets = sorted(t for ts in meta["deploy_map"].values() for t in ts)
        assert targets == sorted(["server", *sites]) and "@ALL" not in json.dumps(meta), (job, meta)
        assert meta["min_clients"] == len(sites), (job, meta)


def test_send_per_case_is_refused_when_true_since_per_case_rows_never_leave(tmp_path):
    cfg = tmp_path / "site_config.yaml"
    cfg.write_text("manifest: m.yaml\nsend_per_case: true\n", encoding="utf-8")
    with pytest.raises(SiteConfigError, match="per-case results never leave a site"):
        resolve_site_config("cbtn", tmp_path)
    cfg.write_text("manifest: m.yaml\nsend_per_case: false\n", encoding="utf-8")
    assert resolve_site_config("cbtn", tmp_path).manifest == tmp_path / "m.yaml"


def test_summaries_of_fewer_than_the_site_minimum_leave_as_counts_only(monkeypatch):
    from plgg_fl.engine.evaluate import summarise
    from plgg_fl.fl.client import MIN_SUMMARY_CASES, min_summary_cases

    def rows(n):  # n cases, two experts: model vs each, and the expert pair
        out = []
        for i in range(n):
            for a, b in (("model", "e1"), ("model", "e2"), ("e1", "e2")):
                out.append({"key": f"k{i}", "comparison": f"{a}_vs_{b}", "a": a, "b": b, "dice": 0.7 + i / 100, "hd95_mm": 2.0,
                            "hd95_defined": True, "surface_dice": 0.8, "sensitivity": 0.9, "precision": 0.8,
                            "vol_pred_ml": 7.3 + i, "vol_ref_ml": 7.2 + i, "vol_diff_ml": 0.1})
        return out

    small = scalar_metrics(summarise(rows(2)), "test/", min_cases=MIN_SUMMARY_CASES)
    assert small and all(k.endswith(("/n", "/n_undefined", "hd95_undefined", "nsd_tolerance_mm")) for k in small), small
    assert small["test/groups/model_vs_e1/dice/n"] == 2
    assert not any(k.rsplit("/", 1)[-1] in ("median", "q1", "q3", "mean", "sd", "p_value", "statistic", "median_difference") for k in small)
    # 5 cases: q1, median, q3 would be the 2nd-4th values and mean and sd then give the other two away
    mid = scalar_metrics(summarise(rows(5)), "test/", min_cases=MIN_SUMMARY_CASES)
    assert mid["test/groups/model_vs_e1/dice/median"] == pytest.approx(0.72)
    assert not any(k.rsplit("/", 1)[-1] in ("q1", "q3", "mean", "sd", "p_value") for k in mid), mid
    big = scalar_metrics(summarise(rows(10)), "test/", min_cases=MIN_SUMMARY_CASES)
    assert {"test/groups/model_vs_e1/dice/q1", "test/groups/model_vs_e1/dice/sd"} <= set(big)
    monkeypatch.setenv("PLGG_FL_MIN_SUMMARY_CASES", "3")
    assert min_summary_cases() == 3
    monkeypatch.setenv("PLGG_FL_MIN_SUMMARY_CASES", "five")
    with pytest.raises(ValueError, match="whole number"):
        min_summary_cases()


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1h"])
def test_round_timeout_must_be_positive_whole_seconds(bad):
    with pytest.raises(ValueError, match="round_timeout_s must be a whole number of seconds > 0"):
        recipes.StageOptions.from_dict({"round_timeout_s": bad})
    assert recipes.StageOptions.from_dict({"round_timeout_s": 90}).round_timeout_s == 90


def test_quantize_option_names_nvflare_filters_and_refuses_what_cannot_run(tmp_path):
    from plgg_fl.pipeline.config import ConfigError, config_from_dict, read_yaml
    from plgg_fl.bundled import bundled_dir

    with pytest.raises(ValueError, match="quantize must be one of float16, blockwise8"):
        recipes.StageOptions.from_dict({"quantize": "int8"})
    recipe = recipes.decoder_recipe(recipes.StageOptions(preset="tiny", quantize="blockwise8"), sites=["cbtn"])
    recipe.export(str(tmp_path / "jobs"))
    app = tmp_path / "jobs" / "plgg_decoder" / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(app.read_text(encoding="utf-8"))
    client = json.loads((tmp_path / "jobs" / "plgg_decoder" / "app_cbtn" / "config" / "config_fed_client.json").read_text(encoding="utf-8"))
    paths = [f["path"] for chain in server.get("task_result_filters", []) for f in chain["filters"]]
    assert paths == ["nvflare.app_opt.pt.quantization.dequantizer.ModelDequantizer"]
    out = [(f["path"], f.get("args")) for chain in client["task_result_filters"] if chain["tasks"] == ["train"] for f in chain["filters"]]
    assert out[0] == ("nvflare.app_opt.pt.quantization.quantizer.ModelQuantizer", {"quantization_type": "blockwise8"})
    assert out[-1][0].endswith("SendRecorder")  # the audit filter sees the quantized payload
    data = read_yaml(bundled_dir("simulator_configs") / "tiny.yaml")
    data["stages"]["decoder"] = {**data["stages"]["decoder"], "quantize": "blockwise8"}
    with pytest.raises(ConfigError, match="blockwise8 runs on CUDA only"):
        config_from_dict(data, "test")


def test_jobs_export_init_ships_an_engine_checkpoint_in_the_form_nvflare_reads(tmp_path):
    import torch

    from plgg_fl.cli import main
    from plgg_fl.engine import PlggUNet, TrainConfig, save_checkpoint

    model = PlggUNet(preset="tiny")
    ckpt = save_checkpoint(tmp_path / "stage1.pt", model, TrainConfig.for_preset("tiny"))
    assert main(["jobs", "export", "--out", str(tmp_path / "jobs"), "--config", "tiny", "--stage", "plgg_finetune",
                 "--init", str(ckpt)]) == 0
    converted = tmp_path / "stage1.nvflare.pt"
    server = (tmp_path / "jobs" / "plgg_finetune" / "app_server" / "config" / "config_fed_server.json").read_text(encoding="utf-8")
    assert str(converted) in server and str(ckpt) not in server
    state = torch.load(converted, weights_only=True)["model"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    nvflare_form = tmp_path / "plain.pt"
    torch.save({"model": model.state_dict()}, nvflare_form)
    assert main(["jobs", "export", "--out", str(tmp_path / "jobs2"), "--config", "tiny", "--stage", "plgg_finetune",
                 "--init", str(nvflare_form)]) == 0  # already NVFlare's form: used as given
    server2 = tmp_path / "jobs2" / "plgg_finetune" / "app_server" / "config" / "config_fed_server.json"
    assert str(nvflare_form) in server2.read_text(encoding="utf-8")


def test_protocol_builds_and_reads_every_metric_key_a_site_sends():
    from plgg_fl.engine.evaluate import summarise
    from plgg_fl.fl import protocol

    from plgg_fl.engine.metrics import METRICS

    rows = [{"key": f"c{i}", "comparison": cmp, "a": a, "b": b, **{m: 0.5 + 0.01 * i for m in METRICS}, "hd95_defined": True}
            for i in range(12) for cmp, a, b in (("model_vs_r1", "model", "r1"), ("model_vs_r2", "model", "r2"), ("r1_vs_r2", "r1", "r2"))]
    sent = protocol.scalar_metrics(summarise(rows), prefix="test/")
    parsed = {k: protocol.parse_summary_key(k) for k in sent}
    groups = {k: p for k, p in parsed.items() if p is not None}
    assert {p.comparison for p in groups.values()} >= {"model_vs_r1", "model_vs_r2", "r1_vs_r2", "model_vs_raters", "inter_rater"}
    assert all(protocol.summary_key(*p) == k for k, p in groups.items())  # built and read in one place, both ways
    assert sent[protocol.summary_key("test", "model_vs_raters", "dice", "n")] == 12
    assert protocol.parse_summary_key("val_dice") is None and protocol.parse_summary_key("test/excluded/cases") is None
    with pytest.raises(ValueError):
        protocol.summary_key("test", "model/vs", "dice", "median")
    assert [protocol.stage(k).job for k in protocol.STAGE_KEYS] == list(protocol.JOB_NAMES[:3])
    assert protocol.stage("plgg_decoder").trains == "decoder" and protocol.stage("finetune").number == 2
    with pytest.raises(ValueError, match="unknown stage"):
        protocol.stage("stage2")
