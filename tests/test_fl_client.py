"""The site client's task handlers, driven with NVFlare FLModels and no federation (seconds)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from plgg_fl.engine import PlggUNet, encoder_decoder_keys
from plgg_fl.fl import client, protocol
from plgg_fl.fl.site import manifest_env_var

SETTINGS = ["--set", "preset=tiny", "--set", "patch_size=[32,32,32]", "--set", "batch_size=1",
            "--set", "spacing_mm=[4.0,4.0,4.0]", "--set", "device=cpu"]


@pytest.fixture(scope="module")
def cbtn_manifest(tmp_path_factory):
    from plgg_fl.synth import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), size="tiny", sites=["cbtn"], progress=False)["cbtn"]


@pytest.fixture
def state_for(cbtn_manifest, monkeypatch, tmp_path):
    monkeypatch.setenv(manifest_env_var("cbtn"), str(cbtn_manifest))
    monkeypatch.chdir(tmp_path)  # where NVFlare runs a site's job: plgg_results/ is written here
    torch.manual_seed(0)
    return lambda *argv: client.site_state(client.parse_args([*argv, *SETTINGS]), "cbtn")


def test_train_task_sends_the_decoder_only_in_stage_3_and_checks_splits_once(state_for, monkeypatch):
    state = state_for("--stage", "decoder", "--local-steps", "1", "--send", "diff")
    calls = []
    real = client.site_cases
    monkeypatch.setattr(client, "site_cases", lambda m, split, *a, **k: calls.append(split) or real(m, split, *a, **k))
    global_model = PlggUNet(preset="tiny").state_dict()
    enc, dec = encoder_decoder_keys(state.model)
    for rnd in range(2):
        received = FLModel(params=dict(global_model), current_round=rnd)
        client.receive_weights(state, received)
        sent = client.handle_train(state, received)
        assert sent.params_type == ParamsType.DIFF and set(sent.params) == set(dec)
        assert all(torch.equal(state.model.state_dict()[k], global_model[k]) for k in enc)  # the encoder stays frozen
        assert {"train_loss", "val/listed", "train/listed"} <= set(sent.metrics)
        assert all(isinstance(v, float) for v in sent.metrics.values())
    assert calls == ["val", "train"]  # once per job, not every round
    with pytest.raises(ValueError, match="missing"):  # a model of another preset: refused, never half-loaded
        client.receive_weights(state, FLModel(params=PlggUNet(preset="small").state_dict()))


def test_evaluate_task_files_rows_under_the_model_name_and_sends_scalars_only(state_for, tmp_path):
    state = state_for("--eval-splits", "test")
    sent = client.handle_evaluate(state, FLModel(meta={protocol.MODEL_NAME_META: "stepwise"}), "job-1")
    label = json.loads((tmp_path / "plgg_results" / "job-1" / "stepwise" / "model.json").read_text(encoding="utf-8"))
    assert label == {"model": "stepwise", "order": 1}
    assert (tmp_path / "plgg_results" / "job-1" / "stepwise" / "test" / "per_case.csv").is_file()
    keys = {k: protocol.parse_summary_key(k) for k in sent.metrics}
    assert sent.params is None and any(p is not None and p.comparison == "model_vs_ref" for p in keys.values())
    assert all(isinstance(v, float) for v in sent.metrics.values())
    client.handle_evaluate(state, FLModel(meta={protocol.MODEL_NAME_META: "../x"}), "job-1")  # not a safe name
    assert (tmp_path / "plgg_results" / "job-1" / "model_2" / "model.json").is_file()


def test_submit_task_sends_every_tensor(state_for):
    state = state_for("--stage", "decoder")
    assert set(client.handle_submit(state).params) == set(state.model.state_dict())


def test_the_client_reports_each_task_as_records_kept_at_the_site_and_written_to_its_log(state_for, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="plgg_fl.client")
    state = client.site_state(client.parse_args(["--local-steps", "1", *SETTINGS]), "cbtn", "job-7")
    received = FLModel(params=PlggUNet(preset="tiny").state_dict(), current_round=3)
    client.receive_weights(state, received)
    client.handle_train(state, received)
    client.handle_evaluate(state, FLModel(meta={protocol.MODEL_NAME_META: "stepwise"}), "job-7")
    state.records.failed(RuntimeError("disk full"))
    kept = protocol.read_records(tmp_path / "plgg_results" / "job-7" / protocol.RECORDS_FILE)
    assert [r["event"] for r in kept] == ["started", "round", "scoring", "evaluation", "failed"]
    assert all(r["site"] == "cbtn" and isinstance(r["time"], float) for r in kept)
    started, rnd, _, evaluation, failed = kept
    assert started["stage"] == "full" and started["sent_tensors"] == started["total_tensors"] > 0
    assert rnd["round"] == 3 and rnd["steps"] == 1 and 0 <= rnd["val_dice"] <= 1 and rnd["train_loss"] > 0
    assert evaluation["model"] == "stepwise" and evaluation["splits"] == "test" and evaluation["n_metrics"] > 0
    assert failed["error"] == "RuntimeError" and failed["message"] == "disk full"
    # the same records, one per log line (the site's job log; the failure at ERROR: error_log.txt), read back the same way
    logged = [(r.levelname, protocol.parse_record_line(r.getMessage())) for r in caplog.records if r.name == "plgg_fl.client"]
    assert [rec for _, rec in logged if rec] == kept
    assert [level for level, rec in logged if rec] == ["INFO"] * 4 + ["ERROR"]
    assert protocol.describe_record(rnd).startswith("[cbtn] round 3: val_dice(global)=")


def test_record_lines_round_trip_and_damage_is_seen():
    rec = protocol.make_record("round", "dfci_bch", 1.5, round=0, train_loss=0.25, steps=10, val_dice=float("nan"))
    assert "val_dice" not in rec  # a number that is not finite is left out: records are strict JSON
    line = "2026-11-30 01:57:29,619 - TaskScriptRunner - INFO - " + protocol.record_line(rec)
    assert protocol.parse_record_line(line) == rec
    assert protocol.parse_record_line("2026-11-30 - INFO - [cbtn] round 0: val_dice(global)=0.5") is None
    damaged = protocol.parse_record_line(protocol.record_line(rec)[:-5])
    assert damaged["event"] == "unreadable" and "dfci_bch" in damaged["line"]
    with pytest.raises(ValueError, match="unknown record event"):
        protocol.make_record("finished", "cbtn", 0.0)
    with pytest.raises(ValueError, match="lacks"):
        protocol.make_record("failed", "cbtn", 0.0, error="X")


def test_job_folder_problems_are_the_failure_records_then_nvflare_logged_errors(tmp_path):
    from plgg_fl.fl import joblogs

    site = tmp_path / "cbtn"
    (site / "plgg_results" / "simulate_job").mkdir(parents=True)
    rec = protocol.make_record("failed", "cbtn", 0.0, error="ManifestError", message="manifest file not found")
    (site / "plgg_results" / "simulate_job" / protocol.RECORDS_FILE).write_text(json.dumps(rec) + "\n", encoding="utf-8")
    entries = [{"levelname": "INFO", "message": "round 0 started"},
               {"levelname": "ERROR", "message": "Traceback (most recent call last):\n  File x\nValueError: bad DXO"},
               {"levelname": "ERROR", "message": "Traceback (most recent call last):\n  File y\nValueError: bad DXO"},
               {"levelname": "CRITICAL", "message": "round 0: no result from site(s) cbtn"}]
    (site / "log.json").write_text("\n".join(map(json.dumps, entries)) + "\nnot json\n", encoding="utf-8")
    assert joblogs.folder_problems(site) == ["[cbtn] FAILED: ManifestError: manifest file not found",
                                             "ValueError: bad DXO", "round 0: no result from site(s) cbtn"]
    assert joblogs.folder_problems(tmp_path / "nowhere") == []
