"""``plgg-fl import-nnunet``: an nnU-Net v2 network, built by nnU-Net itself from a plans file, given random
weights (biases and norm affine parameters included, so the bias handling is tested), saved as nnU-Net's
trainer saves it and imported through the command line, computes the same logits as PlggUNet.

Needs the optional ``nnunet`` extra (``nnunetv2``, ``dynamic_network_architectures``); skipped without it.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")
pytest.importorskip("dynamic_network_architectures")

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402

from plgg_fl.cli import main  # noqa: E402
from plgg_fl.engine.checkpoint import load_checkpoint, read_weights  # noqa: E402
from plgg_fl.engine.networks import parameter_shapes  # noqa: E402
from plgg_fl.engine.nnunet_plans import (  # noqa: E402
    BINARY, T2_ONLY, architecture, brats_architecture, dataset_for, plans_for, write_results_folder,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

TOL = 1e-4  # max abs logit difference allowed (float32 rounding only)
BRATS_CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
# region-based as nnU-Net's BraTS datasets, the whole-tumour region listed last on purpose
BRATS_REGIONS = {"background": 0, "enhancing tumor": [3], "tumor core": [2, 3], "whole tumor": [1, 2, 3]}


def build_network(plans: dict, ds: dict, seed: int = 0) -> torch.nn.Module:
    """nnU-Net's own network for the plans, built as its trainer builds it (get_network_from_plans on the
    configuration's architecture entry, deep supervision on), every parameter drawn at random. Outputs: one
    per region (region-based) or per label, as nnU-Net's LabelManager counts them."""
    arch = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    labels = [v for k, v in ds["labels"].items() if k != "ignore"]
    regions = any(isinstance(v, list) and len(v) > 1 for v in labels)
    n_out = sum(v != 0 for v in labels) if regions else len({x for v in labels for x in (v if isinstance(v, list) else [v])})
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 len(ds["channel_names"]), n_out, allow_init=True, deep_supervision=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            offset = 1.0 if name.endswith("norm.weight") else 0.0  # norm scales around 1, biases around 0
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.5) + offset)
    return net


def save_like_nnunet(net, plans: dict, ds: dict, root: Path, fold=0, extra_logging=None) -> Path:
    """The results folder nnU-Net writes (:func:`write_results_folder`), its checkpoint's logging holding numpy
    float scalars as nnUNetTrainer's does after training."""
    logging = {"mean_fg_dice": [np.float64(0.71)], "ema_fg_dice": [np.float64(0.69)],
               "dice_per_class_or_region": [[np.float64(0.7)]], "train_losses": [np.float64(-0.6)],
               "val_losses": [np.float64(-0.5)], "lrs": [0.01], "epoch_start_timestamps": [1.7e9],
               "epoch_end_timestamps": [1.7e9 + 90], **(extra_logging or {})}
    return write_results_folder(net, plans, ds, root, fold,
                                extra={"logging": logging, "_best_ema": np.float64(0.69), "current_epoch": 1000})


def run_import(folder: Path, out: Path, *extra: str, capsys=None) -> tuple[int, str]:
    rc = main(["import-nnunet", str(folder), "--fold", "0", "--out", str(out), *extra])
    return rc, (capsys.readouterr().err if capsys is not None else "")


def to_nnunet(x: torch.Tensor, perm) -> torch.Tensor:
    """A PlggUNet input as nnU-Net's network holds it: PlggUNet axis p is nnU-Net axis perm[p]."""
    inv = [perm.index(a) for a in range(3)]
    return x.permute(0, 1, *(2 + p for p in inv))


def from_nnunet(y: torch.Tensor, perm) -> torch.Tensor:
    return y.permute(0, 1, *(2 + a for a in perm))


def outputs(plgg, net, x: torch.Tensor, x_nn: torch.Tensor, perm, train: bool):
    """(PlggUNet output, nnU-Net's outputs in PlggUNet's layout); train mode: every deep-supervision level,
    nnU-Net's upsampled (nearest) to full size as PlggUNet returns them."""
    plgg.train(train)
    net.train(train)
    with torch.no_grad():
        mine, theirs = plgg(x), [from_nnunet(t, perm) for t in net(x_nn)]
    if not train:
        return mine, theirs[0]
    size = mine.shape[3:]
    return mine, torch.stack([torch.nn.functional.interpolate(t, size=size, mode="nearest") for t in theirs], dim=1)


def tiny_plans(**kw) -> tuple[dict, dict]:
    arch = architecture([8, 16, 32, 32], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    return plans_for(arch, [32, 32, 32], [1.0, 1.0, 1.0], 1, **kw), dataset_for(T2_ONLY, BINARY)


def test_binary_isotropic_model_gives_nnunets_logits_in_eval_and_every_deep_supervision_level(tmp_path, capsys):
    plans, ds = tiny_plans()
    net = build_network(plans, ds)
    folder = save_like_nnunet(net, plans, ds, tmp_path)
    rc, err = run_import(folder, tmp_path / "stage1.pt", capsys=capsys)
    assert rc == 0, err
    model, cfg, meta = load_checkpoint(tmp_path / "stage1.pt")
    assert meta["source"].startswith("nnU-Net v2 Dataset999_Toy nnUNetTrainer__nnUNetPlans__3d_fullres fold 0")
    assert meta["nnunet"]["checkpoint_sha256"] and meta["nnunet"]["dropped"]["conv_biases_before_instance_norm"] == 14
    assert cfg.patch_size == (32, 32, 32) and cfg.spacing_mm == (1.0, 1.0, 1.0) and cfg.orientation == "RAS"
    assert model.arch["trans_bias"] is True and model.arch["deep_supr_num"] == 2
    perm = (2, 1, 0)  # nnU-Net (SimpleITK) holds the voxel axes reversed
    torch.manual_seed(1)
    x = torch.randn(2, 1, 32, 32, 32)
    for train in (False, True):
        mine, theirs = outputs(model, net, x, to_nnunet(x, perm), perm, train)
        assert mine.shape == theirs.shape
        diff = (mine - theirs).abs().max().item()
        print(f"binary isotropic, {'train (3 deep-supervision levels)' if train else 'eval'}: max |logit diff| {diff:.2e}")
        assert diff <= TOL
    # the conv biases cancel but the transposed convolutions' do not: without them the logits differ
    model.eval()
    with torch.no_grad():
        for up in model.upsamples:
            up.transp_conv.conv.bias.zero_()
        assert (model(x) - from_nnunet(net.eval()(to_nnunet(x, perm))[0], perm)).abs().max() > 100 * TOL
    # --axes keep: nnU-Net's axis order as it is, the same tensor in and out
    assert run_import(folder, tmp_path / "keep.pt", "--axes", "keep")[0] == 0
    kept, _, kept_meta = load_checkpoint(tmp_path / "keep.pt")
    mine, theirs = outputs(kept, net, x, x, (0, 1, 2), False)
    assert (mine - theirs).abs().max().item() <= TOL and kept_meta["nnunet"]["warnings"]


def test_anisotropic_transposed_plan_maps_kernels_strides_and_spacing_to_ras_order(tmp_path, capsys):
    # thick slices along the file's first voxel axis: nnU-Net's planner moves that axis first (transpose_forward)
    # and strides it less; kernels stay 3^3 (a plan whose kernels differ between levels is refused, below)
    arch = architecture([8, 16, 24, 32], [[3, 3, 3]] * 4, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 1, 2]])
    plans = plans_for(arch, [16, 32, 40], [3.0, 0.8, 0.9], 1, transpose_forward=(2, 0, 1))
    ds = dataset_for(T2_ONLY, BINARY)
    net = build_network(plans, ds, seed=3)
    folder = save_like_nnunet(net, plans, ds, tmp_path)
    rc, err = run_import(folder, tmp_path / "aniso.pt", capsys=capsys)
    assert rc == 0, err
    model, cfg, meta = load_checkpoint(tmp_path / "aniso.pt")
    # network axis a = reader axis transpose_forward[a] = voxel axis 2 - transpose_forward[a]: voxel axis p <- network axis
    perm = (0, 2, 1)
    assert meta["nnunet"]["axes"]["perm"] == list(perm)
    assert cfg.spacing_mm == (3.0, 0.9, 0.8) and cfg.patch_size == (16, 40, 32)
    assert model.arch["kernel_size"] == [3, 3, 3, 3] and model.arch["strides"] == [1, [1, 2, 2], 2, [1, 2, 1]]
    assert model.axis_divisors == (2, 8, 4)
    assert any("anisotropic" in w for w in meta["nnunet"]["warnings"])
    torch.manual_seed(2)
    x = torch.randn(1, 1, 16, 40, 32)
    for train in (False, True):
        mine, theirs = outputs(model, net, x, to_nnunet(x, perm), perm, train)
        diff = (mine - theirs).abs().max().item()
        print(f"anisotropic strides, transpose_forward [2,0,1], {'train' if train else 'eval'}: max |logit diff| {diff:.2e}")
        assert diff <= TOL


def test_region_based_four_channel_model_is_its_whole_tumour_sigmoid_on_t2_with_other_channels_zero(tmp_path, capsys):
    arch = architecture([8, 16, 32, 32], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    plans, ds = plans_for(arch, [32, 32, 32], [1.0, 1.0, 1.0], 4), dataset_for(BRATS_CHANNELS, BRATS_REGIONS)
    net = build_network(plans, ds, seed=5)
    folder = save_like_nnunet(net, plans, ds, tmp_path)
    rc, err = run_import(folder, tmp_path / "brats.pt", capsys=capsys)
    assert rc == 0, err
    model, _, meta = load_checkpoint(tmp_path / "brats.pt")
    info = meta["nnunet"]
    assert info["input_channel"] == {"index": 2, "name": "T2", "of": 4, "exact": "as nnU-Net with every other input channel zero"}
    assert info["output"]["region"] == "whole tumor" and info["output"]["index"] == 2
    assert info["dropped"]["input_channels"] == 3
    perm = (2, 1, 0)
    torch.manual_seed(4)
    x = torch.randn(2, 1, 32, 32, 32)
    x_nn = torch.zeros(2, 4, 32, 32, 32)
    x_nn[:, 2:3] = to_nnunet(x, perm)  # T2; T1, T1ce and FLAIR zero
    for train in (False, True):
        mine, theirs = outputs(model, net, x, x_nn, perm, train)
        p_mine = torch.softmax(mine, dim=-4)[..., 1, :, :, :]
        p_theirs = torch.sigmoid(theirs[..., 2, :, :, :])
        dp = (p_mine - p_theirs).abs().max().item()
        dl = ((mine[..., 1, :, :, :] - mine[..., 0, :, :, :]) - theirs[..., 2, :, :, :]).abs().max().item()
        print(f"region-based 4-channel, {'train' if train else 'eval'}: max |p diff| {dp:.2e}, max |logit diff| {dl:.2e}")
        assert dp <= TOL and dl <= TOL
    # with the other channels not zero nnU-Net computes something else: the statement is about zeros only
    x_nn[:, 0] = 1.0
    mine, theirs = outputs(model, net, x, x_nn, perm, False)
    assert (torch.softmax(mine, 1)[:, 1] - torch.sigmoid(theirs[:, 2])).abs().max() > 100 * TOL


def test_nnunets_own_trainer_checkpoint_reads_safely_and_imports(tmp_path, monkeypatch, capsys):
    trainer_mod = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    plans, ds = tiny_plans()
    trainer = trainer_mod.nnUNetTrainer({**copy.deepcopy(plans), "continue_training": False}, "3d_fullres", 0, ds,
                                        device=torch.device("cpu"))
    trainer.network = build_network(plans, ds, seed=7)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.logger.log("mean_fg_dice", np.float64(0.7), 0)
    trainer._best_ema = np.float64(0.7)
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))  # nnU-Net's own writer
    folder = Path(trainer.output_folder_base)
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(ds), encoding="utf-8")
    capsys.readouterr()
    rc, err = run_import(folder.parent, tmp_path / "s1.pt", capsys=capsys)  # the dataset folder: default trainer/plans/3d_fullres
    assert rc == 0, err
    model, _, _ = load_checkpoint(tmp_path / "s1.pt")
    x = torch.randn(1, 1, 32, 32, 32)
    mine, theirs = outputs(model, trainer.network, x, to_nnunet(x, (2, 1, 0)), (2, 1, 0), False)
    assert (mine - theirs).abs().max().item() <= TOL


def test_plans_from_before_the_architecture_entry_import_the_same(tmp_path):
    plans, ds = tiny_plans()
    net = build_network(plans, ds)
    new = save_like_nnunet(net, plans, ds, tmp_path / "new")
    old_plans = copy.deepcopy(plans)
    conf = old_plans["configurations"]["3d_fullres"]
    kw = conf.pop("architecture")["arch_kwargs"]
    conf.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=8, unet_max_num_features=32,
                conv_kernel_sizes=kw["kernel_sizes"], pool_op_kernel_sizes=kw["strides"],
                n_conv_per_stage_encoder=kw["n_conv_per_stage"], n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"])
    old = save_like_nnunet(net, old_plans, ds, tmp_path / "old")
    assert run_import(new, tmp_path / "new.pt")[0] == 0 and run_import(old, tmp_path / "old.pt")[0] == 0
    a, b = read_weights(tmp_path / "new.pt")[0], read_weights(tmp_path / "old.pt")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _refused(tmp_path, capsys, plans, ds, *extra, net=None, extra_logging=None) -> str:
    folder = save_like_nnunet(net if net is not None else build_network(plans, ds), plans, ds, tmp_path,
                              extra_logging=extra_logging)
    capsys.readouterr()
    rc, err = run_import(folder, tmp_path / "x.pt", *extra, capsys=capsys)
    assert rc == 2 and not (tmp_path / "x.pt").exists(), err
    assert err.startswith("plgg-fl import-nnunet: error: cannot import: ")
    return err


def test_residual_encoder_batch_norm_and_whole_image_normalisation_are_refused_naming_the_part(tmp_path, capsys):
    res = architecture([8, 16, 32, 32], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3, cls="ResidualEncoderUNet")
    plans, ds = plans_for(res, [32] * 3, [1.0] * 3, 1), dataset_for(T2_ONLY, BINARY)
    err = _refused(tmp_path / "res", capsys, plans, ds)
    assert "ResidualEncoderUNet" in err and "residual blocks" in err
    bn = architecture([8, 16, 32, 32], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3, norm="BatchNorm3d")
    err = _refused(tmp_path / "bn", capsys, plans_for(bn, [32] * 3, [1.0] * 3, 1), ds)
    assert "norm_op" in err and "BatchNorm3d" in err and "instance norm" in err
    plans, ds = tiny_plans(use_mask=False)
    err = _refused(tmp_path / "mask", capsys, plans, ds)
    assert "use_mask_for_norm is false" in err and "whole image" in err
    # an anisotropic plan's [1, 3, 3] first levels: DynUNet's decoder takes each level's kernel from the level below
    aniso = architecture([8, 16, 32, 32], [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    err = _refused(tmp_path / "kernels", capsys, plans_for(aniso, [16, 32, 32], [3.0, 0.8, 0.8], 1), ds)
    assert "kernel_sizes" in err and "level 1" in err and "the level below" in err


def test_label_based_multiclass_is_refused_unless_the_heads_start_fresh(tmp_path, capsys):
    arch = architecture([8, 16, 32, 32], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    plans = plans_for(arch, [32] * 3, [1.0] * 3, 4)
    ds = dataset_for(BRATS_CHANNELS, {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3})
    net = build_network(plans, ds)
    err = _refused(tmp_path / "a", capsys, plans, ds, net=net)
    assert "label-based softmax over 4 classes" in err and "no linear function" in err and "--reinit-heads" in err
    folder = save_like_nnunet(net, plans, ds, tmp_path / "b")
    assert run_import(folder, tmp_path / "fresh.pt", "--reinit-heads")[0] == 0
    model, _, meta = load_checkpoint(tmp_path / "fresh.pt")
    assert meta["nnunet"]["output"]["mapping"] == "output heads re-initialised (not imported)"
    torch.testing.assert_close(model.input_block.norm1.weight, net.encoder.stages[0][0].convs[0].norm.weight)


def test_a_checkpoint_holding_more_than_data_is_read_only_when_trusted(tmp_path, capsys):
    plans, ds = tiny_plans()
    err = _refused(tmp_path, capsys, plans, ds, extra_logging={"started": datetime.datetime(2026, 1, 1)})
    assert "datetime.datetime" in err and "weights_only=True" in err and "--trust-checkpoint" in err
    folder = tmp_path / "Dataset999_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert run_import(folder, tmp_path / "trusted.pt", "--trust-checkpoint")[0] == 0


def test_tiny_shaped_plans_import_as_the_tiny_preset_and_the_pipeline_takes_them_as_pretrained(tmp_path):
    from plgg_fl.pipeline.config import config_from_dict
    from plgg_fl.pipeline.run import Pipeline

    # tiny's network exactly: nnU-Net without conv bias has no transposed-conv bias either
    arch = architecture([8, 16, 32, 48], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3, conv_bias=False)
    plans, ds = plans_for(arch, [32] * 3, [2.0] * 3, 1), dataset_for(T2_ONLY, BINARY)
    net = build_network(plans, ds)
    folder = save_like_nnunet(net, plans, ds, tmp_path)
    assert run_import(folder, tmp_path / "stage1.pt")[0] == 0
    model, cfg, meta = load_checkpoint(tmp_path / "stage1.pt")
    assert model.init_args == {"preset": "tiny"} and meta["nnunet"]["preset"] == "tiny" and cfg.preset == "tiny"
    x = torch.randn(1, 1, 32, 32, 32)
    mine, theirs = outputs(model, net, x, to_nnunet(x, (2, 1, 0)), (2, 1, 0), False)
    assert (mine - theirs).abs().max().item() <= TOL
    stages = {s: {"sites": ["brats" if s == "pretrain" else "cbtn"], "num_rounds": 1, "local_steps": 1}
              for s in ("pretrain", "finetune", "decoder")}
    run_cfg = config_from_dict({"name": "imported", "cohort": {"dir": str(tmp_path / "cohort")}, "preset": "tiny",
                                "stages": stages, "methods": ["stepwise"], "pretrained": str(tmp_path / "stage1.pt")}, "test")
    pipe = Pipeline(run_cfg, out_root=tmp_path / "runs", printer=lambda *_: None)
    handed = pipe.use_pretrained(run_cfg.pretrained)  # the check `plgg-fl simulate` runs before skipping stage 1
    got = torch.load(handed, weights_only=True)["model"]
    assert got.keys() == model.state_dict().keys() and all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_standard_brats_plans_import_as_nnunet_v2_which_the_pipeline_accepts(tmp_path, capsys):
    # nnU-Net 2.8's planner for BraTS 2021 at 1 mm (cropped median ~140 x 171 x 137): 6 levels of 32..320
    # filters, 3^3 kernels, stride 2 everywhere, 128^3 patches; 4 channels, 3 sigmoid regions
    plans, ds = plans_for(brats_architecture(), [128] * 3, [1.0] * 3, 4), dataset_for(BRATS_CHANNELS, BRATS_REGIONS)
    net = build_network(plans, ds, seed=11)
    folder = save_like_nnunet(net, plans, ds, tmp_path)
    rc, err = run_import(folder, tmp_path / "brats.pt", capsys=capsys)
    assert rc == 0, err
    state, train_cfg = read_weights(tmp_path / "brats.pt")
    assert train_cfg["preset"] == "nnunet_v2" and train_cfg["patch_size"] == [128, 128, 128]
    assert {k: tuple(v.shape) for k, v in state.items()} == parameter_shapes("nnunet_v2")  # Pipeline.use_pretrained's check
    model, _, _ = load_checkpoint(tmp_path / "brats.pt")
    assert model.init_args == {"preset": "nnunet_v2"}
    torch.manual_seed(6)
    x = torch.randn(1, 1, 64, 32, 32)  # 5 downsamplings: the bottleneck is 2 x 1 x 1
    x_nn = torch.zeros(1, 4, 32, 32, 64)
    x_nn[:, 2:3] = to_nnunet(x, (2, 1, 0))
    mine, theirs = outputs(model, net, x, x_nn, (2, 1, 0), False)
    dp = (torch.softmax(mine, 1)[:, 1] - torch.sigmoid(theirs[:, 2])).abs().max().item()
    dl = ((mine[:, 1] - mine[:, 0]) - theirs[:, 2]).abs().max().item()
    print(f"standard BraTS plans as nnunet_v2, eval: max |p diff| {dp:.2e}, max |logit diff| {dl:.2e}")
    assert dp <= TOL and dl <= TOL


@pytest.mark.parametrize("channels, picked", [
    ({"0": "T1", "1": "T2*", "2": "T2"}, 2),  # T2* is not a second T2
    ({"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}, 2),  # BraTS 2023: t2f is T2-FLAIR
    ({"0": "FLAIR", "1": "T2-FLAIR", "2": "T2-weighted"}, 2),
    ({"0": "T1", "1": "FLAIR", "2": "t2f"}, None),
])
def test_the_t2_channel_is_named_by_the_data_importers_rule(channels, picked):
    from plgg_fl.engine.nnunet_import import NnUNetImportError, _pick_channel

    if picked is None:
        with pytest.raises(NnUNetImportError, match="no T2 channel"):
            _pick_channel({"channel_names": channels}, len(channels), None)
    else:
        assert _pick_channel({"channel_names": channels}, len(channels), None) == (picked, channels[str(picked)])
