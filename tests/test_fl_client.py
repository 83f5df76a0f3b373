"""The site client's task handlers, driven with NVFlare FLModels and no federation (seconds)."""

from __future__ import annotations

import json

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
