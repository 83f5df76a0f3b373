"""A failing site stops the pipeline with the site's name and its log lines (real simulator, ~30 s).

NVFlare's simulator can return 0 although a client failed, so the pipeline checks outputs; here the
site's data is missing, the client script fails, and the report must say which site and why."""

from __future__ import annotations

import pytest

from plgg_fl.fl.recipes import StageOptions, pretrain_recipe
from plgg_fl.pipeline.simulate import StageFailed, check_training, run_in_simulator

pytestmark = pytest.mark.slow


def test_failing_site_is_named_with_its_log_lines(tmp_path):
    opts = StageOptions(preset="tiny", num_rounds=1, local_steps=1, train={"patch_size": [32, 32, 32], "device": "cpu"})
    missing = tmp_path / "nowhere" / "manifest.yaml"
    with pytest.raises(StageFailed) as err:
        res = run_in_simulator(pretrain_recipe(opts), ["brats"], tmp_path / "ws", {"brats": missing},
                               printer=lambda s: None, timeout_s=240)
        check_training(res, 1)
    msg = str(err.value)
    assert "brats" in msg
    assert "manifest file not found" in msg or "FAILED" in msg, msg
