"""Same config, same seed -> the same stage-1 global model, bit for bit (real simulator, ~50 s): the
server's random initial weights are seeded (SeededPlggUNet) and the site's training is seeded."""

from __future__ import annotations

import pytest
import torch

from plgg_fl.fl.recipes import StageOptions, pretrain_recipe
from plgg_fl.pipeline.simulate import check_training, run_in_simulator

pytestmark = pytest.mark.slow


def test_stage1_is_reproducible(tmp_path):
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["brats"], progress=False)
    opts = StageOptions(preset="tiny", num_rounds=1, local_steps=2,
                        train={"patch_size": [32, 32, 32], "batch_size": 1, "spacing_mm": [4.0, 4.0, 4.0], "device": "cpu", "seed": 3})
    states = []
    for run in ("a", "b"):
        res = run_in_simulator(pretrain_recipe(opts), ["brats"], tmp_path / run, manifests, printer=lambda s: None, timeout_s=240)
        check_training(res, 1)
        states.append(torch.load(res.last_model, weights_only=False)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
