"""Same config, same seed -> the same global model, bit for bit (real simulator, ~50 s per stage): the
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


def test_two_site_stage_is_reproducible_bit_for_bit(tmp_path):
    """Stage 2 at two sites, twice: the same global model whatever order the sites' results reach the
    server in (SiteOrderAggregator; the order itself is forced both ways in test_fl_aggregation.py)."""
    from plgg_fl.fl.recipes import finetune_recipe
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["cbtn", "dfci_bch"], progress=False)
    opts = StageOptions(preset="tiny", num_rounds=2, local_steps=2,
                        train={"patch_size": [32, 32, 32], "batch_size": 1, "spacing_mm": [4.0, 4.0, 4.0], "device": "cpu", "seed": 5})
    states = []
    for run in ("a", "b"):
        res = run_in_simulator(finetune_recipe(opts, sites=["cbtn", "dfci_bch"]), ["cbtn", "dfci_bch"], tmp_path / run, manifests,
                               printer=lambda s: None, timeout_s=300)
        check_training(res, 2)
        states.append(torch.load(res.last_model, weights_only=False)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
