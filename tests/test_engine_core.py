"""Engine: network layout, freezing, training, inference geometry, checkpoints (tiny preset, CPU)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from plgg_fl.engine import (
    PRESETS,
    PlggUNet,
    TrainConfig,
    Trainer,
    encoder_decoder_keys,
    load_checkpoint,
    predict,
    save_checkpoint,
    validate,
)
from plgg_fl.engine.metrics import dice
from plgg_fl.engine.toydata import toy_volume, write_toy_case
from plgg_fl.engine.train import deep_supervision_weights

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

# Native grid 1.5 mm; tiny config resamples to 2 mm -> ~30^3 voxels after cropping to the brain.
FAST = dict(optimizer="adamw", lr=5e-3, augment=False, max_steps=25, sw_batch_size=4)


@pytest.fixture(scope="module")
def toy_cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return [write_toy_case(d, f"toy{i}", seed=i, label_value=(1, 2, 4)[i % 3]) for i in range(4)]


@pytest.fixture(scope="module")
def trained(toy_cases):
    """A tiny model trained for 25 steps on the toy cases (Dice ~0.75), and its untrained twin."""
    torch.manual_seed(0)
    untrained = PlggUNet("tiny")
    model = PlggUNet("tiny")
    model.load_state_dict(untrained.state_dict())
    cfg = TrainConfig.for_preset("tiny", **FAST)
    trainer = Trainer(model, cfg, toy_cases, progress=False)
    trainer.train_steps(25)
    return trainer, untrained, cfg


@pytest.mark.parametrize("preset", list(PRESETS))
def test_encoder_decoder_keys_partition_state_dict(preset):
    model = PlggUNet(preset)
    keys = list(model.state_dict())
    enc, dec = encoder_decoder_keys(model)
    assert enc and dec
    assert set(enc).isdisjoint(dec)
    assert sorted(enc + dec) == sorted(keys)
    assert not any(k.startswith("skip_layers") for k in keys)  # DynUNet's aliases are dropped
    assert any(k.startswith("bottleneck.") for k in enc) and any(k.startswith("output_block.") for k in dec)


def test_presets_sizes_and_rebuild_from_init_args():
    tiny = PlggUNet("tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 500_000
    clone = PlggUNet(**tiny.init_args)
    clone.load_state_dict(tiny.state_dict())  # same architecture from plain args
    custom = PlggUNet("tiny", filters=[4, 8, 16, 16], norm="batch")
    assert custom.init_args == {"preset": "tiny", "filters": [4, 8, 16, 16], "norm": "batch"}
    x = torch.randn(1, 1, 16, 16, 16)
    tiny.eval()
    assert tiny(x).shape == (1, 2, 16, 16, 16)
    tiny.train()
    assert tiny(x).shape == (1, 3, 2, 16, 16, 16)  # full res + 2 deep-supervision heads


def test_deep_supervision_weights_follow_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(5)
    expected = np.array([1, 0.5, 0.25, 0.125, 0.0]) / 1.875
    np.testing.assert_allclose(w, expected)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_freeze_encoder_step_changes_only_decoder(toy_cases, norm):
    torch.manual_seed(0)
    model = PlggUNet("tiny", norm=norm)
    cfg = TrainConfig.for_preset("tiny", **FAST)
    trainer = Trainer(model, cfg, toy_cases[:2], freeze_encoder=True, progress=False)
    enc, dec = encoder_decoder_keys(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train_steps(1)
    after = model.state_dict()
    for k in enc:
        assert torch.equal(before[k], after[k]), f"encoder tensor {k} changed"
    changed = [k for k in dec if not torch.equal(before[k], after[k])]
    weights = [k for k in dec if k.endswith("weight")]
    assert set(weights) <= set(changed), f"decoder weights unchanged: {set(weights) - set(changed)}"
    model.train()
    enc_modules = [m for n, m in model.named_modules() if n.startswith(("input_block", "downsamples", "bottleneck"))]
    assert enc_modules and not any(m.training for m in enc_modules)
    assert model.output_block.training
    if norm == "batch":
        assert any(k.endswith("running_mean") for k in enc)


def test_training_is_seeded(toy_cases):
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        cfg = TrainConfig.for_preset("tiny", **{**FAST, "augment": True})
        losses.append(Trainer(PlggUNet("tiny"), cfg, toy_cases[:2], progress=False).train_steps(2)["loss"])
    assert losses[0] == losses[1]


def test_learning_is_real(trained, toy_cases):
    trainer, untrained, cfg = trained
    after = validate(trainer.model, toy_cases, cfg)["val_dice"]
    before = validate(untrained, toy_cases, cfg)["val_dice"]
    assert after > 0.6, (before, after)
    assert after > before + 0.4


def test_trainer_state_survives_rounds_with_new_global_weights(trained):
    trainer, untrained, _ = trained
    step0 = trainer.step
    params = list(trainer.model.parameters())
    trainer.model.load_state_dict(untrained.state_dict())  # what an FL client does between rounds
    assert all(a is b for a, b in zip(params, trainer.model.parameters()))
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in params}
    assert all(len(trainer.optimizer.state[p]) > 0 for p in params)  # Adam moments kept
    out = trainer.train_steps(2)
    assert out["steps"] == 2 and trainer.step == step0 + 2 == out["total_steps"]
    assert trainer.scheduler.last_epoch == trainer.step
    trainer.model.load_state_dict(untrained.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), untrained.state_dict().values()))


def test_checkpoint_round_trip_gives_identical_predictions(trained, toy_cases, tmp_path):
    trainer, _, cfg = trained
    path = save_checkpoint(tmp_path / "m.pt", trainer.model, cfg, step=trainer.step, meta={"stage": "test"})
    model, cfg2, meta = load_checkpoint(path, device=next(trainer.model.parameters()).device)
    assert cfg2 == cfg and meta["step"] == trainer.step and meta["stage"] == "test"
    assert meta["preprocessing"]["spacing_mm"] == list(cfg.spacing_mm)
    a = predict(trainer.model, toy_cases[0]["image"], cfg, return_prob=True)
    b = predict(model, toy_cases[0]["image"], cfg2, return_prob=True)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.prob, b.prob)


class _Oracle(nn.Module):
    """Foreground where the z-scored image exceeds 1.5 (the toy tumour is ~ +3.5 sd)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([1.5 - x, x - 1.5], dim=1) * 10


@pytest.mark.parametrize("flip", [(True, True, False), (False, True, True)])
def test_prediction_keeps_input_grid_for_non_ras_anisotropic_input(tmp_path, flip):
    shape, spacing = (36, 44, 20), (1.2, 0.9, 2.5)
    case = write_toy_case(tmp_path, "lps", seed=3, shape=shape, spacing_mm=spacing, flip=flip)
    img = nib.load(case["image"])
    cfg = TrainConfig.for_preset("tiny", spacing_mm=(1.5, 1.5, 1.5), keep_largest=True)
    pred = predict(_Oracle(), case["image"], cfg)
    assert pred.mask.shape == shape
    np.testing.assert_allclose(pred.affine, img.affine)
    ref = np.asarray(nib.load(case["label"]).dataobj) > 0
    assert dice(pred.mask, ref) > 0.85  # voxel-aligned with the reference in the input grid
    out = pred.save(tmp_path / "pred.nii.gz", like=case["image"])
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    assert back.shape == shape
    # the same image given as a nibabel object gives the same answer
    assert np.array_equal(predict(_Oracle(), img, cfg).mask, pred.mask)


def test_toy_volume_is_sane():
    img, seg = toy_volume((24, 24, 24), (2.0, 2.0, 2.0), seed=1)
    assert seg.sum() > 0 and img[seg > 0].mean() > img[(seg == 0) & (img > 0)].mean()


def test_keep_largest_component():
    from plgg_fl.engine.infer import keep_largest_component

    m = np.zeros((10, 10, 10), np.uint8)
    m[1:4, 1:4, 1:4] = 1
    m[6:8, 6:8, 6:8] = 1
    m[4, 4, 4] = 1  # diagonal neighbour of the big cube: 26-connected to it
    out = keep_largest_component(m)
    assert out.sum() == 27 + 1 and out[6:8, 6:8, 6:8].sum() == 0


def test_mirror_tta_of_a_flip_equivariant_model_changes_nothing(tmp_path):
    case = write_toy_case(tmp_path, "tta", seed=5, shape=(30, 34, 26), spacing_mm=(2.0, 2.0, 2.0))
    cfg = TrainConfig.for_preset("tiny", spacing_mm=None)
    plain = predict(_Oracle(), case["image"], cfg, tta=False, return_prob=True)
    tta = predict(_Oracle(), case["image"], cfg, tta=True, return_prob=True)
    np.testing.assert_allclose(tta.prob, plain.prob, atol=1e-4)
    assert plain.mask.any()


def test_received_weights_load_whole_or_decoder_only_never_half():
    """A global model with other keys (another preset, a renamed layer) stops the site, naming them;
    before, the client loaded it non-strictly and scored a half-random model."""
    from plgg_fl.engine import PlggUNet, encoder_decoder_keys, load_received_weights

    model, other = PlggUNet(preset="tiny"), PlggUNet(preset="tiny")
    enc, dec = encoder_decoder_keys(model)
    full = {k: v.clone() + 1 for k, v in other.state_dict().items()}
    assert load_received_weights(model, full) == "full"
    assert all(torch.equal(model.state_dict()[k], full[k]) for k in full)
    before_enc = {k: model.state_dict()[k].clone() for k in enc}
    assert load_received_weights(model, {k: full[k] * 2 for k in dec}, partial_keys=dec) == "partial"
    assert all(torch.equal(model.state_dict()[k], before_enc[k]) for k in enc)
    with pytest.raises(ValueError, match=r"missing \d+ .*decoder tensors may be sent alone"):
        load_received_weights(model, {k: full[k] for k in dec[:-1]}, partial_keys=dec)  # not exactly the decoder
    with pytest.raises(ValueError, match=r"missing .*unexpected 1 \(extra\.weight\)"):
        load_received_weights(model, {**{k: full[k] for k in enc}, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        load_received_weights(model, {k: full[k] for k in dec})  # decoder alone outside stage 3
    small = PlggUNet(preset="small").state_dict()
    with pytest.raises((ValueError, RuntimeError)):  # another preset: other keys or other shapes, never loaded
        load_received_weights(model, small)


def test_a_models_config_is_its_checkpoints_own_else_the_fallback(tmp_path):
    """The report's gallery and the review kit run a method's model with the config it was trained and
    evaluated with (its engine checkpoint's), never one rebuilt from the run's YAML, unless the file has none."""
    from plgg_fl.engine.checkpoint import model_and_config

    own = TrainConfig.for_preset("tiny", patch_size=[24, 24, 24], spacing_mm=[4.0, 4.0, 4.0])
    model = PlggUNet(preset="tiny")
    ckpt = save_checkpoint(tmp_path / "engine.pt", model, own)
    fallback = TrainConfig.for_preset("small")
    got_model, got_cfg = model_and_config(ckpt, fallback)
    assert got_cfg.to_dict() == own.to_dict() and got_model.preset == "tiny"
    torch.save({"model": model.state_dict()}, tmp_path / "nvflare.pt")  # an NVFlare global model: no config of its own
    tiny_fallback = TrainConfig.for_preset("tiny")
    got_model, got_cfg = model_and_config(tmp_path / "nvflare.pt", tiny_fallback)
    assert got_cfg is tiny_fallback and all(torch.equal(got_model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_channels_last_inference_is_the_standard_layouts_computation():
    """CPU bf16 inference runs the network channels-last (engine.infer.inference_memory_format); its instance
    norm computes nn.InstanceNorm3d's normalisation on such a tensor, and the model gets its own layout back."""
    from plgg_fl.engine.config import cpu_has_native_bf16
    from plgg_fl.engine.infer import inference_memory_format, model_memory_format, sliding_window_probs
    from plgg_fl.engine.networks import InstanceNorm3dNDHWC

    cl = torch.channels_last_3d
    torch.manual_seed(0)
    norm = InstanceNorm3dNDHWC(8, affine=True)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.5, 0.5)
    ref = nn.InstanceNorm3d(8, affine=True)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 8, 6, 7, 5) * 3 + 1
    out = norm(x.contiguous(memory_format=cl))
    assert out.is_contiguous(memory_format=cl) and not out.is_contiguous()
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(norm(x), ref(x))  # the standard layout takes InstanceNorm3d's own path

    model = PlggUNet("tiny").eval()
    assert any(isinstance(m, InstanceNorm3dNDHWC) for m in model.modules())
    assert not any(type(m) is nn.InstanceNorm3d for m in model.modules())
    cpu, cfg = torch.device("cpu"), TrainConfig.for_preset("tiny", cpu_bf16=False)
    assert inference_memory_format(cpu, cfg) == torch.contiguous_format  # fp32: the unoptimised path as it was
    assert inference_memory_format(cpu, cfg.replace(cpu_bf16=True)) == cl
    assert inference_memory_format(torch.device("cuda"), cfg.replace(cpu_bf16=True)) == torch.contiguous_format
    assert inference_memory_format(cpu, cfg.replace(channels_last=True)) == cl
    w = model.input_block.conv1.conv.weight  # [8, 1, 3, 3, 3]: contiguous in both layouts, strides differ
    before = w.stride()
    with model_memory_format(model, cl):
        assert w.stride() == torch.empty_like(w, memory_format=cl).stride() != before
        if cpu_has_native_bf16():  # oneDNN's bf16 convolutions follow the weights' layout
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert model(torch.zeros(1, 1, 32, 32, 32)).is_contiguous(memory_format=cl)
    assert w.stride() == before
    img = torch.randn(1, 1, 40, 36, 44)
    plain = sliding_window_probs(model, img, cfg, cpu)
    last = sliding_window_probs(model, img, cfg.replace(channels_last=True), cpu)  # fp32 both: only the layout differs
    torch.testing.assert_close(last, plain, atol=1e-4, rtol=0)
    assert w.stride() == before
