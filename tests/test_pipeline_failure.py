"""A failing site stops the pipeline with the site's name and its log lines (real simulator, ~30 s).

NVFlare's simulator can return 0 although a client failed, so the pipeline checks outputs; here the
site's data is missing, the client script fails, and the report must say which site and why."""

from __future__ import annotations

import os

import pytest

from plgg_fl.fl.protocol import read_records
from plgg_fl.fl.recipes import StageOptions, pretrain_recipe
from plgg_fl.fl.site import manifest_env_var
from plgg_fl.pipeline.simulate import StageFailed, check_training, run_in_simulator

pytestmark = pytest.mark.slow


def test_failing_site_is_named_with_its_log_lines(tmp_path, monkeypatch):
    opts = StageOptions(preset="tiny", num_rounds=1, local_steps=1, train={"patch_size": [32, 32, 32], "device": "cpu"})
    missing = tmp_path / "nowhere" / "manifest.yaml"
    monkeypatch.setenv("PLGG_FL_TEST_UNTOUCHED", "kept")
    monkeypatch.delenv(manifest_env_var("brats"), raising=False)
    before = dict(os.environ)
    with pytest.raises(StageFailed) as err:
        res = run_in_simulator(pretrain_recipe(opts), ["brats"], tmp_path / "ws", {"brats": missing},
                               printer=lambda s: None, timeout_s=240)
        check_training(res, 1)
    msg = str(err.value)
    # the site's failure record (plgg_fl.fl.protocol), read from its records.jsonl, names the site and why
    assert "[brats] FAILED: ManifestError:" in msg and "manifest file not found" in msg, msg
    (rec,) = [r for r in read_records(next((tmp_path / "ws").rglob("brats/plgg_results/*/records.jsonl"))) if r["event"] == "failed"]
    assert rec["site"] == "brats" and rec["error"] == "ManifestError" and "manifest file not found" in rec["message"]
    assert "load_manifest" in rec["traceback"]
    # the caller's environment is as it was: what the run set for the simulator is undone, nothing else touched
    assert dict(os.environ) == before
