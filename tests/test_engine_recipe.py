"""Engine training recipe: preset defaults reach every partial config, LR warm-up, augmentation levels
and the augmentation switch-on step (docs/learning.md)."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import RandAdjustContrastd, RandAffined, RandFlipd

from plgg_fl.engine import PlggUNet, TrainConfig, Trainer
from plgg_fl.engine.toydata import write_toy_case
from plgg_fl.engine.train import poly_factor
from plgg_fl.engine.transforms import augmentations

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_partial_configs_get_their_presets_defaults():
    # a job's --set or a YAML's train block names only some fields; the preset fills the rest
    cfg = TrainConfig.from_overrides({"preset": "nnunet", "device": "cpu"})
    assert cfg.patch_size == (128, 128, 128) and cfg.spacing_mm == (1.0, 1.0, 1.0)
    assert (cfg.optimizer, cfg.lr, cfg.augment) == ("sgd", 0.01, "nnunet")
    small = TrainConfig.from_overrides({"preset": "small", "lr": 1e-3})
    assert (small.optimizer, small.lr, small.augment, small.warmup_fraction) == ("adamw", 1e-3, "light", 0.1)
    assert TrainConfig.from_overrides({}).preset == "small"


def test_stored_bool_augment_still_loads_and_bad_levels_fail():
    assert TrainConfig.from_dict({"augment": True}).augment == "nnunet"
    assert TrainConfig.from_dict({"augment": False}).augment == "off"
    with pytest.raises(ValueError, match="augment must be one of"):
        TrainConfig.from_dict({"augment": "heavy"})


def test_warmup_ramps_linearly_then_follows_poly():
    assert poly_factor(0, 100, 0.9, warmup_steps=10) == pytest.approx(0.1 * (1.0) ** 0.9)
    assert poly_factor(4, 100, 0.9, warmup_steps=10) == pytest.approx(0.5 * (0.96) ** 0.9)
    assert poly_factor(9, 100, 0.9, warmup_steps=10) == pytest.approx(poly_factor(9, 100, 0.9))
    assert poly_factor(50, 100, 0.9, warmup_steps=10) == pytest.approx(0.5**0.9)
    assert poly_factor(3, 100, 0.9) == pytest.approx(0.97**0.9)  # no warm-up: nnU-Net's schedule


def test_light_augmentation_mirrors_left_right_only():
    light = augmentations("light")
    flips = [t for t in light if isinstance(t, RandFlipd)]
    assert [f.flipper.spatial_axis for f in flips] == [0]
    assert not any(isinstance(t, RandAffined) for t in light)
    full = augmentations("nnunet")
    assert sorted(f.flipper.spatial_axis for f in full if isinstance(f, RandFlipd)) == [0, 1, 2]
    assert augmentations("off") == []
    with pytest.raises(ValueError):
        augmentations("strong")


def test_augmentation_switches_on_at_its_step_and_lr_warms_up(tmp_path):
    cases = [write_toy_case(tmp_path, f"t{i}", seed=i) for i in range(2)]
    cfg = TrainConfig.for_preset("tiny", augment="light", augment_warmup_steps=2, max_steps=10,
                                 warmup_fraction=0.5, batch_size=1, device="cpu", cpu_bf16=False)
    torch.manual_seed(0)
    trainer = Trainer(PlggUNet("tiny"), cfg, cases, progress=False)

    def has_gamma() -> bool:
        return any(isinstance(t, RandAdjustContrastd) for t in trainer.dataset.transform.transforms)

    assert not has_gamma()
    lrs = []
    for _ in range(4):
        trainer.train_steps(1)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        if trainer.step <= 2:
            assert not has_gamma()
    assert has_gamma()
    assert trainer.dataset.transform is trainer.transform
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] <= cfg.lr  # 5 warm-up steps
