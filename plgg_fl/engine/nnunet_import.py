"""Stage 1 from a trained nnU-Net v2 model: its ``PlainConvUNet`` weights on the matching :class:`PlggUNet`.

``plgg-fl import-nnunet RESULTS --fold 0 --out stage1.pt`` reads an nnU-Net v2 results folder - the
trainer folder ``<nnUNet_results>/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres/`` (``plans.json``,
``dataset.json``, ``fold_N/checkpoint_final.pth``), the dataset folder above it, or a checkpoint file - and
writes an engine checkpoint (:func:`plgg_fl.engine.checkpoint.save_checkpoint`) with the preprocessing the
plans imply. ``plgg-fl simulate`` takes it as ``pretrained:`` and ``plgg-fl submit --init`` as stage 2's
start, so stage 1 is not trained again. Importing needs no nnU-Net (the plans are JSON; the checkpoint is
read with ``torch.load(weights_only=True)``); the tests build nnU-Net's own network to show that the
imported one computes the same logits.

Exact (the same logits up to float rounding):

* the network: ``PlainConvUNet`` (3D convolutions, instance norm with affine parameters, leaky ReLU 0.01,
  two convolutions per level in encoder and decoder, no dropout, one kernel size for every level) ->
  PlggUNet with the plans' filters, kernel size and strides per level (per axis where anisotropic), the
  decoder's transposed-convolution bias (``trans_bias``) and every segmentation output: nnU-Net's
  ``decoder.seg_layers`` (lowest resolution first, the last at full resolution) are PlggUNet's
  ``deep_supervision_heads`` (level 1 = half resolution first) and ``output_block``;
* the convolution biases: each is followed by instance norm, which subtracts every channel's mean, so the
  bias cancels exactly and PlggUNet's convolutions (bias-free, as DynUNet's) leave it out;
* the output: a label-based model of background and one foreground label (softmax, 2 outputs) as it is; a
  region-based model (sigmoid per region, as nnU-Net's BraTS models) through its whole-tumour region ``l``,
  as the 2-class softmax head with rows (0, l): softmax([0, l])[1] = sigmoid(l);
* the input: one channel, T2 (by name in ``channel_names``, or ``channel``). Of a multi-channel model the
  first convolution keeps that channel's weights: nnU-Net's network on the same T2 with every other channel
  zero. nnU-Net never saw zeros there (its other inputs were z-scored scans), so a 4-channel BraTS model on
  T2 alone is a start for fine-tuning, not nnU-Net's BraTS model.

Axis order: nnU-Net holds a scan in SimpleITK order - the file's voxel axes reversed, (k, j, i) - then
permuted by the plans' ``transpose_forward``; the plans' spacing, patch size, kernels and strides are in
that order. plgg-fl reorients every scan to RAS and keeps (x, y, z) order. ``axes="reverse"`` (default)
undoes both, for the spacing, patch, kernels, strides and every kernel tensor, so each network axis meets
the anatomy it was trained on. That is exact for models trained on RAS-reoriented scans
(``NibabelIOWithReorient``). With nnU-Net's default reader (``SimpleITKIO``) nnU-Net saw each file in its
stored voxel order, which is RAS's axis order for scans stored axially (voxel axes along x, y, z, as BraTS
and most MRI), up to mirroring along axes - which nnU-Net trains with (mirror augmentation) and predicts
with (mirror test-time augmentation), but which changes the logits. ``axes="keep"`` keeps nnU-Net's order.

Not mapped, each refused with :class:`NnUNetImportError` naming the part and why: other architectures
(``ResidualEncoderUNet``: residual blocks), 2D, batch norm or none, other non-linearities, dropout, other
than two convolutions per level, kernel sizes that differ between levels (nnU-Net's decoder convolves a
level with its own kernel, DynUNet's with the level below's: anisotropic plans' [1, 3, 3] first levels),
a first level that strides, cascade configurations, normalisations other than z-score over the non-zero
voxels, and label-based multi-class outputs (unless ``reinit_heads``).
docs/ENGINE.md ("Stage 1 from nnU-Net") says the same for users.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from plgg_fl.data.importers import t2_channel
from plgg_fl.engine.checkpoint import file_sha256
from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.networks import PRESETS, PlggUNet, preset_args
from plgg_fl.engine.nnunet_results import (NnUNetImportError, configuration_plan, find_checkpoint,
                                           read_json, read_nnunet_checkpoint)

__all__ = ["NnUNetImportError", "ImportResult", "import_nnunet", "find_checkpoint", "read_nnunet_checkpoint",
           "configuration_plan", "axis_permutation"]

log = logging.getLogger("plgg_fl.engine")

#: PlainConvUNet arguments this importer knows (dynamic_network_architectures 0.4); any other may change the network
_KNOWN_ARCH_KWARGS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                      "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                      "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "nonlin_first"}
_WHY_NOT = {
    "ResidualEncoderUNet": "its encoder levels are residual blocks (several per level, with skip convolutions); "
                           "PlggUNet's are two plain convolutions",
    "ResidualUNet": "its levels are residual blocks; PlggUNet's are two plain convolutions",
}


@dataclass
class ImportResult:
    """What :func:`import_nnunet` wrote: ``path``, the network (``model_args``, ``preset`` when the
    architecture is exactly a preset's, else None), the TrainConfig and the checkpoint's ``meta``."""

    path: Path
    model_args: dict[str, Any]
    preset: str | None
    config: TrainConfig
    meta: dict[str, Any]
    n_parameters: int
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- what maps onto what

def _short(name: Any) -> str:
    return str(name or "").rsplit(".", 1)[-1]


def _per_level(value: Any, n: int, what: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise NnUNetImportError(f"{what}: expected {n} entries (one per level), got {value!r}")
    return list(value)


def _per_axis(value: Any, what: str) -> tuple[int, int, int]:
    v = [value] * 3 if isinstance(value, int) else list(value)
    if len(v) != 3 or not all(isinstance(x, int) and x > 0 for x in v):
        raise NnUNetImportError(f"{what}: expected 3 positive integers (one per axis), got {value!r}")
    return v[0], v[1], v[2]


def _dynunet_padding(kernel: int, stride: int) -> int:
    """MONAI DynUNet's padding for ``kernel``/``stride`` (``get_padding``), for comparison with nnU-Net's."""
    return int((kernel - stride + 1) / 2)


@dataclass
class _Network:
    n_stages: int
    filters: list[int]
    kernels: list[tuple[int, int, int]]  # per level, nnU-Net axis order
    strides: list[tuple[int, int, int]]
    conv_bias: bool


def _check_architecture(arch: dict, configuration: str) -> _Network:
    """The PlainConvUNet of ``arch`` (a plans ``architecture`` entry) if PlggUNet can be it exactly, else
    :class:`NnUNetImportError` naming the part that cannot."""
    cls = arch.get("network_class_name")
    if _short(cls) != "PlainConvUNet":
        why = _WHY_NOT.get(_short(cls), "PlggUNet is a plain-convolution U-Net; other architectures have layers it has not")
        raise NnUNetImportError(f"network {cls!r} of configuration {configuration!r} is not PlainConvUNet: {why}")
    kw = dict(arch.get("arch_kwargs") or {})
    unknown = sorted(set(kw) - _KNOWN_ARCH_KWARGS)
    if unknown:
        raise NnUNetImportError(f"PlainConvUNet argument(s) {', '.join(unknown)} are not known to this importer "
                                "(written for dynamic_network_architectures 0.4) and may change the network")
    if not _short(kw.get("conv_op")).endswith("Conv3d"):
        raise NnUNetImportError(f"conv_op {kw.get('conv_op')!r}: configuration {configuration!r} is not 3D; PlggUNet is "
                                "a 3D network (import a 3d_fullres model)")
    n = int(kw.get("n_stages", 0))
    if n < 3:
        raise NnUNetImportError(f"n_stages {n}: PlggUNet (MONAI DynUNet) needs at least 3 levels")
    norm = _short(kw.get("norm_op"))
    if norm != "InstanceNorm3d":
        raise NnUNetImportError(
            f"norm_op {kw.get('norm_op')!r}: only instance norm maps. PlggUNet's presets use instance norm (the "
            "federated jobs build networks by preset name), and only instance norm cancels the convolution biases "
            "PlggUNet does not have" + (" (batch norm keeps them in its running statistics)" if "Batch" in norm else ""))
    norm_kw = dict(kw.get("norm_op_kwargs") or {})
    if not norm_kw.get("affine", False) or norm_kw.get("track_running_stats", False) or abs(float(norm_kw.get("eps", 1e-5)) - 1e-5) > 1e-12:
        raise NnUNetImportError(f"norm_op_kwargs {norm_kw}: PlggUNet's instance norm has affine=True, eps=1e-5 and no "
                                "running statistics")
    if _short(kw.get("nonlin")) != "LeakyReLU" or float((kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)) != 0.01:
        raise NnUNetImportError(f"nonlin {kw.get('nonlin')!r} {kw.get('nonlin_kwargs') or {}}: PlggUNet uses leaky ReLU "
                                "with negative slope 0.01")
    if kw.get("nonlin_first"):
        raise NnUNetImportError("nonlin_first: nnU-Net applies the non-linearity before the norm; PlggUNet after it")
    if kw.get("dropout_op") is not None:
        raise NnUNetImportError(f"dropout_op {kw.get('dropout_op')!r}: PlggUNet has no dropout between convolution "
                                "and norm (where nnU-Net puts it)")
    for key, what in (("n_conv_per_stage", "encoder"), ("n_conv_per_stage_decoder", "decoder")):
        counts = _per_level(kw.get(key, 2), n if key == "n_conv_per_stage" else n - 1, key)
        if any(int(c) != 2 for c in counts):
            raise NnUNetImportError(f"{key} {counts}: PlggUNet's {what} levels are exactly two convolutions each "
                                    "(MONAI's UnetBasicBlock)")
    filters = [int(f) for f in _per_level(kw.get("features_per_stage"), n, "features_per_stage")]
    kernels = [_per_axis(k, f"kernel_sizes[{i}]") for i, k in enumerate(_per_level(kw.get("kernel_sizes"), n, "kernel_sizes"))]
    strides = [_per_axis(s, f"strides[{i}]") for i, s in enumerate(_per_level(kw.get("strides"), n, "strides"))]
    if strides[0] != (1, 1, 1):
        raise NnUNetImportError(f"strides[0] {list(strides[0])}: the first level downsamples the input; PlggUNet's "
                                "output must be on the input's grid")
    for level in range(n - 1):
        if kernels[level] != kernels[level + 1]:
            raise NnUNetImportError(
                f"kernel_sizes {[list(k) for k in kernels]}: nnU-Net's decoder convolves level {level} with that level's "
                f"kernel {list(kernels[level])}, MONAI DynUNet's (PlggUNet's) with the level below's {list(kernels[level + 1])}; "
                "PlggUNet can be such a network only where every level has the same kernel")
    for i, (ks, ss) in enumerate(zip(kernels, strides)):
        for axis, (k, s) in enumerate(zip(ks, ss)):
            if k % 2 == 0 or (k - 1) // 2 != _dynunet_padding(k, s):
                raise NnUNetImportError(f"level {i} axis {axis}: kernel {k} with stride {s} pads differently in nnU-Net "
                                        f"({(k - 1) // 2}) and PlggUNet ({_dynunet_padding(k, s)})")
    return _Network(n, filters, kernels, strides, bool(kw.get("conv_bias", False)))


def axis_permutation(transpose_forward: list[int] | None, axes: str = "reverse") -> tuple[int, int, int]:
    """``perm`` with PlggUNet's spatial axis ``p`` = nnU-Net network axis ``perm[p]``.

    nnU-Net's network axis ``a`` is its reader's array axis ``transpose_forward[a]``, and that array holds
    the file's voxel axes reversed (SimpleITK order; NibabelIO transposes to match), so array axis ``r`` is
    voxel axis ``2 - r``. ``reverse`` maps network axes back to voxel (RAS, after plgg-fl's reorientation)
    order; ``keep`` leaves them as they are."""
    if axes == "keep":
        return 0, 1, 2
    if axes != "reverse":
        raise NnUNetImportError(f"axes must be 'reverse' or 'keep', got {axes!r}")
    tf = [int(a) for a in (transpose_forward if transpose_forward is not None else [0, 1, 2])]
    if sorted(tf) != [0, 1, 2]:
        raise NnUNetImportError(f"transpose_forward {transpose_forward!r}: not a permutation of the three axes")
    p0, p1, p2 = (tf.index(2 - p) for p in range(3))
    return p0, p1, p2


def _pick_channel(dataset_json: dict, n_in: int, channel: str | int | None) -> tuple[int, str]:
    names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if channel is None and n_in == 1:
        idx = 0
    else:
        try:
            idx = t2_channel(names, channel)  # the data importer's rule: not FLAIR / t2f / T2*
        except ValueError as exc:
            raise NnUNetImportError(f"{exc} (name the one plgg-fl's T2 scans correspond to)") from None
    if not 0 <= idx < n_in:
        raise NnUNetImportError(f"channel {idx}: the network has {n_in} input channel(s)")
    return idx, {int(k): str(v) for k, v in names.items()}.get(idx, str(idx))


def _head_map(dataset_json: dict, n_out: int, region: str | int | None,
              reinit_heads: bool) -> tuple[dict, Callable[[torch.Tensor, torch.Tensor], tuple] | None]:
    """``(description, map)``: ``map(weight, bias)`` turns one nnU-Net segmentation layer into PlggUNet's
    2-class head; ``None`` where the heads start fresh (``reinit_heads``)."""
    labels = {k: v for k, v in (dataset_json.get("labels") or {}).items() if k != "ignore"}
    if not labels or any(isinstance(v, str) for v in labels.values()):
        raise NnUNetImportError(f"dataset.json labels {labels}: expected nnU-Net v2's {{name: value or list of values}}")
    regions = {k: tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for k, v in labels.items()}
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):  # region-based (nnU-Net's rule)
        fg = {k: r for k, r in regions.items() if set(r) != {0}}
        names = list(fg)
        if len(names) != n_out:
            raise NnUNetImportError(f"dataset.json has {len(names)} regions ({', '.join(names)}) but the network "
                                    f"{n_out} outputs")
        if region is not None:
            idx = int(region) if str(region).isdigit() else next(
                (i for i, k in enumerate(names) if k.lower() == str(region).lower()), None)
            if idx is None or not 0 <= idx < n_out:
                raise NnUNetImportError(f"region {region!r} is not one of {', '.join(names)}")
        else:
            union = set().union(*fg.values())
            whole = [i for i, k in enumerate(names) if set(fg[k]) == union]
            if len(whole) != 1:
                raise NnUNetImportError(f"no single region covers every label ({', '.join(f'{k}={list(r)}' for k, r in fg.items())}):"
                                        " name the whole-tumour region with --region")
            idx = whole[0]

        def region_rows(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # softmax([0, l])[1] = sigmoid(l): the region's sigmoid as a 2-class softmax
            return torch.stack([torch.zeros_like(w[idx]), w[idx]]), torch.stack([torch.zeros_like(b[idx]), b[idx]])

        desc = {"kind": "region", "region": names[idx], "labels": list(fg[names[idx]]), "index": idx,
                "of": names, "mapping": "2-class softmax rows (0, region logit): softmax[1] = sigmoid(region logit)"}
        return desc, region_rows
    values = sorted({int(v) for r in regions.values() for v in r})
    if len(values) != n_out:
        raise NnUNetImportError(f"dataset.json has {len(values)} labels but the network {n_out} outputs")
    fg_names = [k for k, r in regions.items() if r != (0,)]
    if n_out == 2:
        return {"kind": "labels", "foreground": fg_names[0], "mapping": "as is (softmax over background, foreground)"}, (
            lambda w, b: (w, b))
    if reinit_heads:
        return {"kind": "labels", "classes": list(regions), "mapping": "output heads re-initialised (not imported)"}, None
    raise NnUNetImportError(
        f"label-based softmax over {n_out} classes ({', '.join(regions)}): whole tumour = 1 - p(background) is no linear "
        "function of the logits, so no 2-class head computes it exactly. --reinit-heads imports all but the output "
        "heads (which start fresh; stage 2 trains every layer), or import a region-based or binary model")


def _args_key(args: dict) -> dict:
    """``preset_args`` output with kernel sizes / strides as per-level per-axis tuples (for comparison)."""
    out = dict(args)
    for k in ("kernel_size", "strides"):
        out[k] = tuple(tuple([v] * 3) if isinstance(v, int) else tuple(v) for v in args[k])
    out["filters"] = tuple(args["filters"])
    return out


def _compact(axes3: tuple[int, int, int]) -> int | list[int]:
    return axes3[0] if len(set(axes3)) == 1 else list(axes3)


def _model_args(net: _Network, perm: tuple[int, int, int]) -> tuple[dict[str, Any], str | None]:
    """``(PlggUNet kwargs, the preset they are exactly, or None)``."""
    overrides = {
        "filters": list(net.filters),
        "kernel_size": [_compact(tuple(k[a] for a in perm)) for k in net.kernels],
        "strides": [_compact(tuple(s[a] for a in perm)) for s in net.strides],
        "deep_supr_num": net.n_stages - 2,  # every nnU-Net seg layer below full resolution
        "deep_supervision": True,
        "norm": "instance",
        "res_block": False,
        "trans_bias": net.conv_bias,
    }
    for name in PRESETS:
        if _args_key(preset_args(name)) == _args_key(preset_args(name, **overrides)):
            return {"preset": name}, name
    base = "nnunet_v2" if net.conv_bias else "nnunet"
    return {"preset": base, **overrides}, None


# ----------------------------------------------------------------------------- the weights

_ALIAS = re.compile(r"^decoder\.encoder\.|\.all_modules\.")


def _canonical_of(alias: str) -> str | None:
    """The key an nnU-Net state-dict alias repeats (``decoder.encoder.*`` = ``encoder.*``; in a
    ConvDropoutNormReLU without dropout ``all_modules.0`` = ``conv``, ``all_modules.1`` = ``norm``)."""
    key = alias[len("decoder."):] if alias.startswith("decoder.encoder.") else alias
    m = re.search(r"\.all_modules\.(\d+)\.", key)
    if m:
        part = {"0": "conv", "1": "norm"}.get(m.group(1))
        if part is None:
            return None
        key = key[:m.start()] + f".{part}." + key[m.end():]
    return key


def _convert(state: dict[str, torch.Tensor], net: _Network, perm: tuple[int, int, int], channel: int,
             head: Callable | None) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """PlggUNet's state dict from nnU-Net's PlainConvUNet ``state`` (heads left out when ``head`` is None),
    and counts of what was left out. Every nnU-Net tensor is used, dropped for a stated reason, or an alias;
    anything else raises :class:`NnUNetImportError`."""
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel / torch.compile wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    used: set[str] = set()
    dropped = {"conv_bias": 0, "other_input_channels": 0}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise NnUNetImportError(f"the checkpoint has no {key}: its weights are not those of the plans' network")
        used.add(key)
        return state[key].detach().to("cpu", torch.float32)

    def spatial(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 1, *(2 + a for a in perm)).contiguous()

    out: dict[str, torch.Tensor] = {}

    def block(src: str, dst: str, first: bool = False) -> None:
        for j in (0, 1):
            w = take(f"{src}.convs.{j}.conv.weight")
            if first and j == 0:
                dropped["other_input_channels"] = w.shape[1] - 1
                w = w[:, channel:channel + 1]
            out[f"{dst}.conv{j + 1}.conv.weight"] = spatial(w)
            if net.conv_bias:
                take(f"{src}.convs.{j}.conv.bias")  # the instance norm right after subtracts it again
                dropped["conv_bias"] += 1
            out[f"{dst}.norm{j + 1}.weight"] = take(f"{src}.convs.{j}.norm.weight")
            out[f"{dst}.norm{j + 1}.bias"] = take(f"{src}.convs.{j}.norm.bias")

    n = net.n_stages
    for s in range(n):
        block(f"encoder.stages.{s}.0", "input_block" if s == 0 else "bottleneck" if s == n - 1 else f"downsamples.{s - 1}",
              first=s == 0)
    for d in range(n - 1):  # decoder levels, deepest first in both networks
        out[f"upsamples.{d}.transp_conv.conv.weight"] = spatial(take(f"decoder.transpconvs.{d}.weight"))
        if net.conv_bias:
            out[f"upsamples.{d}.transp_conv.conv.bias"] = take(f"decoder.transpconvs.{d}.bias")
        block(f"decoder.stages.{d}", f"upsamples.{d}.conv_block")
        level = n - 2 - d  # 0 = full resolution
        w, b = take(f"decoder.seg_layers.{d}.weight"), take(f"decoder.seg_layers.{d}.bias")
        if head is None:
            continue
        w2, b2 = head(w, b)
        name = "output_block" if level == 0 else f"deep_supervision_heads.{level - 1}"
        out[f"{name}.conv.conv.weight"], out[f"{name}.conv.conv.bias"] = spatial(w2), b2
    rest = [k for k in state if k not in used]
    unknown = [k for k in rest if not _ALIAS.search(k)]
    if unknown:
        hint = (" (batch norm statistics: the trainer built the network with batch norm, not the plans' instance norm)"
                if any("running_" in k or "num_batches" in k for k in unknown) else "")
        raise NnUNetImportError(f"{len(unknown)} checkpoint tensor(s) the plans' PlainConvUNet does not have: "
                                f"{', '.join(unknown[:4])}{', ...' if len(unknown) > 4 else ''}{hint}")
    for k in rest:  # aliases must repeat the tensors they name, or the file is not what it seems
        c = _canonical_of(k)
        if c is None or c not in state or state[c].shape != state[k].shape or not torch.equal(state[c], state[k]):
            raise NnUNetImportError(f"checkpoint tensor {k} is not the copy of {c} that nnU-Net's state dicts hold")
    return out, dropped


# ----------------------------------------------------------------------------- the whole import

def import_nnunet(results: str | Path, out: str | Path, *, fold: str | int = 0, checkpoint: str = "final",
                  configuration: str | None = None, trainer: str = "nnUNetTrainer", plans_name: str = "nnUNetPlans",
                  channel: str | int | None = None, region: str | int | None = None, reinit_heads: bool = False,
                  axes: str = "reverse", trust_checkpoint: bool = False, seed: int = 0) -> ImportResult:
    """Import an nnU-Net v2 model (see the module docstring) and write the engine checkpoint ``out``.

    ``results``: trainer folder, dataset folder or checkpoint file; ``fold``/``checkpoint`` ("final" |
    "best") pick the file. ``channel``: the input channel kept (index or ``channel_names`` name; default
    the one named T2). ``region``: region-based models' whole-tumour region (name or output index; default
    the region covering every label). ``reinit_heads``: label-based multi-class models get fresh output
    heads (``seed``). ``axes``: "reverse" | "keep" (module docstring). Raises :class:`NnUNetImportError`."""
    folder, ckpt_path = find_checkpoint(results, fold, checkpoint, configuration, trainer, plans_name)
    ck = read_nnunet_checkpoint(ckpt_path, trust=trust_checkpoint)
    init = ck.get("init_args") if isinstance(ck.get("init_args"), dict) else {}
    plans = read_json(folder / "plans.json") or init.get("plans")
    dataset_json = read_json(folder / "dataset.json") or init.get("dataset_json")
    if not isinstance(plans, dict) or not isinstance(dataset_json, dict):
        raise NnUNetImportError(f"{folder}: no plans.json / dataset.json, and the checkpoint's init_args hold none")
    saved_conf = init.get("configuration")
    if configuration and saved_conf and configuration != saved_conf:
        raise NnUNetImportError(f"{ckpt_path}: trained as configuration {saved_conf!r}, not {configuration!r}")
    conf_name = str(configuration or saved_conf or folder.name.rsplit("__", 1)[-1])
    conf = configuration_plan(plans, conf_name)
    if conf.get("previous_stage") or conf.get("next_stage"):
        raise NnUNetImportError(
            f"configuration {conf_name!r} is part of nnU-Net's cascade ("
            + ("its input includes the low-resolution stage's segmentation" if conf.get("previous_stage") else
               f"its output feeds {conf.get('next_stage')!r}") + "); PlggUNet is one network on T2 alone: import 3d_fullres")
    net = _check_architecture(conf.get("architecture") or {}, conf_name)
    state = ck["network_weights"]
    n_in = _first_conv_channels(state)
    ch, ch_name = _pick_channel(dataset_json, n_in, channel)
    norm_schemes = list(conf.get("normalization_schemes") or [])
    use_mask = list(conf.get("use_mask_for_norm") or [])
    scheme = norm_schemes[ch] if ch < len(norm_schemes) else None
    if _short(scheme) != "ZScoreNormalization":
        raise NnUNetImportError(f"channel {ch} ({ch_name}) normalisation {scheme!r}: plgg-fl z-scores T2 over the "
                                "non-zero voxels; only nnU-Net's ZScoreNormalization maps")
    if not (ch < len(use_mask) and bool(use_mask[ch])):
        raise NnUNetImportError(
            f"channel {ch} ({ch_name}): use_mask_for_norm is false, so nnU-Net z-scored it over the whole image; plgg-fl "
            "z-scores over the non-zero (brain) voxels of skull-stripped scans, and the network would meet intensities "
            "it was not trained on")
    n_out = int(_tensor(state, "decoder.seg_layers.0.weight").shape[0])
    head_desc, head = _head_map(dataset_json, n_out, region, reinit_heads)
    perm = axis_permutation(plans.get("transpose_forward"), axes)
    model_args, preset = _model_args(net, perm)
    weights, dropped = _convert(state, net, perm, ch, head)
    with torch.random.fork_rng(devices=[]):  # fresh heads are seeded; the caller's RNG stream is left alone
        torch.manual_seed(seed)
        model = PlggUNet(**model_args)
    if head is None:  # fresh output heads, the rest imported
        fresh = model.state_dict()
        weights.update({k: v for k, v in fresh.items() if k.startswith(("output_block.", "deep_supervision_heads."))})
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise NnUNetImportError(f"the mapped weights do not fit PlggUNet({model_args}): "
                                f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None

    def order(v: Any) -> list:
        v = list(v)
        return [v[a] for a in perm]

    spacing = [float(s) for s in order(conf["spacing"])]
    patch = [int(p) for p in order(conf["patch_size"])]
    base = preset or str(model_args["preset"])
    cfg = TrainConfig.for_preset(base, patch_size=patch, spacing_mm=spacing,
                                 batch_size=int(conf.get("batch_size", TrainConfig.for_preset(base).batch_size)))
    warnings = _warnings(plans, conf, axes, perm, n_in, ch_name, preset, reinit_heads)
    trainer_name = str(ck.get("trainer_name", folder.name.split("__")[0]))
    epoch = ck.get("current_epoch")
    source = (f"nnU-Net v2 {plans.get('dataset_name', '?')} {folder.name} fold {fold} ({ckpt_path.name}"
              + (f", epoch {int(epoch)}" if isinstance(epoch, int) else "") + ")")
    meta = {
        "source": source,
        "stage": "stage1 (imported from nnU-Net, not trained by plgg-fl)",
        "nnunet": {
            "dataset": plans.get("dataset_name"), "trainer": trainer_name, "plans": plans.get("plans_name"),
            "configuration": conf_name, "fold": str(fold), "checkpoint": str(ckpt_path.resolve()),
            "checkpoint_sha256": file_sha256(ckpt_path), "epoch": epoch if isinstance(epoch, int) else None,
            "network": "PlainConvUNet", "preset": preset, "model_args": model_args,
            "input_channel": {"index": ch, "name": ch_name, "of": n_in,
                              "exact": "as nnU-Net with every other input channel zero" if n_in > 1 else "as nnU-Net"},
            "output": head_desc,
            "axes": {"mode": axes, "perm": list(perm), "transpose_forward": plans.get("transpose_forward"),
                     "image_reader_writer": plans.get("image_reader_writer")},
            "plans_spacing": list(conf["spacing"]), "plans_patch_size": list(conf["patch_size"]),
            "normalisation": "nnU-Net ZScoreNormalization over the non-zero mask (use_mask_for_norm); plgg-fl: z-score "
                             "over non-zero voxels (nnU-Net's mask is the hole-filled non-zero region of all channels, "
                             "normalised before resampling)",
            "dropped": {"conv_biases_before_instance_norm": dropped["conv_bias"],
                        "input_channels": dropped["other_input_channels"]},
            "warnings": warnings,
        },
    }
    from plgg_fl.engine.checkpoint import save_checkpoint

    path = save_checkpoint(out, model, cfg, step=0, meta=meta)
    for w in warnings:
        log.warning("%s", w)
    return ImportResult(Path(path), model_args, preset, cfg, meta, sum(p.numel() for p in model.parameters()), warnings)


def _tensor(state: dict, key: str) -> torch.Tensor:
    for k in (key, "module." + key, "_orig_mod." + key):
        if isinstance(state.get(k), torch.Tensor):
            return state[k]
    raise NnUNetImportError(f"the checkpoint has no {key}: not a PlainConvUNet's weights")


def _first_conv_channels(state: dict) -> int:
    return int(_tensor(state, "encoder.stages.0.0.convs.0.conv.weight").shape[1])


def _warnings(plans: dict, conf: dict, axes: str, perm, n_in: int, ch_name: str, preset: str | None,
              reinit_heads: bool) -> list[str]:
    out = []
    reader = str(plans.get("image_reader_writer") or "unknown")
    spacing = [float(s) for s in conf["spacing"]]
    anisotropic = max(spacing) > 1.5 * min(spacing) or any(
        len(set(k if isinstance(k, (list, tuple)) else [k])) > 1
        for k in (conf["architecture"].get("arch_kwargs") or {}).get("kernel_sizes", []))
    if axes == "keep":
        out.append("axes kept in nnU-Net's order (--axes keep): the network's axes are nnU-Net's reader's reversed voxel "
                   "order (then transpose_forward) and plgg-fl feeds RAS (x, y, z), so scans reach it with their axes swapped")
    elif reader not in ("NibabelIOWithReorient",):
        out.append(f"axis order: nnU-Net read its training scans with {reader} in their stored voxel order; plgg-fl "
                   "reorients to RAS. The axes match for scans stored axially (BraTS, most MRI), up to mirroring"
                   + ("; this plan is anisotropic, so check that its thick-slice axis (spacing "
                      f"{[spacing[a] for a in perm]} in RAS order here) is the one your scans have" if anisotropic else ""))
    if n_in > 1:
        out.append(f"input: channel '{ch_name}' of {n_in}; the other channels' weights are left out, so the model is "
                   "nnU-Net's network only where those channels are zero - expect worse stage-1 predictions until stage 2 "
                   "fine-tunes it")
    if reinit_heads:
        out.append("output heads re-initialised: this model predicts nothing useful until it is fine-tuned")
    if preset is None:
        out.append("its architecture is no PlggUNet preset: `plgg-fl train --init`, evaluate, predict and export take it, "
                   "but the federated jobs (simulate, submit) build networks by preset name and cannot")
    return out
