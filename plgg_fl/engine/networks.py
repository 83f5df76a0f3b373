"""The segmentation network: a MONAI DynUNet with an explicit, name-separable encoder and decoder.

Layout (parameter-name prefixes of ``PlggUNet.state_dict()``):

- **encoder** = ``input_block.*``, ``downsamples.*``, ``bottleneck.*``
- **decoder** = ``upsamples.*``, ``output_block.*``, ``deep_supervision_heads.*``

DynUNet's recursive ``skip_layers`` helper aliases the same modules under a second name; PlggUNet
drops it and runs the U-Net with an explicit loop, so every tensor appears exactly once in the
state dict (what NVFlare exchanges) and the partition above is exact.

Input ``[B, 1, X, Y, Z]`` (z-scored T2, any size divisible by the total stride), output 2-class logits
``[B, 2, X, Y, Z]`` (channel 1 = whole tumour; softmax, not sigmoid). In train mode with deep
supervision the output is ``[B, 1 + n_ds, 2, X, Y, Z]``: the full-resolution map first, then the
lower-resolution heads (upsampled to full size), highest resolution first - DynUNet's convention.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

ENCODER_PREFIXES = ("input_block.", "downsamples.", "bottleneck.")
DECODER_PREFIXES = ("upsamples.", "output_block.", "deep_supervision_heads.")

#: Plain-value architecture arguments per preset. ``strides[0]`` is the input block's stride (1).
PRESETS: dict[str, dict[str, Any]] = {
    # tests: ~0.3 M parameters, 3 downsamplings (patch sides divisible by 8)
    "tiny": dict(
        filters=[8, 16, 32, 48],
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        norm="instance",
        deep_supervision=True,
        deep_supr_num=2,
        res_block=False,
    ),
    # CPU demo: ~4.6 M parameters, 4 downsamplings (patch sides divisible by 16)
    "small": dict(
        filters=[16, 32, 64, 128, 192],
        kernel_size=[3, 3, 3, 3, 3],
        strides=[1, 2, 2, 2, 2],
        norm="instance",
        deep_supervision=True,
        deep_supr_num=3,
        res_block=False,
    ),
    # nnU-Net v1 3d_fullres for 128^3 patches at 1 mm: 6 levels, 32..320 filters, instance norm,
    # leaky ReLU 0.01, plain conv blocks; ~31 M parameters.
    # Every preset supervises all decoder levels below full resolution except the bottleneck's
    # (DynUNet's maximum deep_supr_num = levels - 2).
    "nnunet": dict(
        filters=[32, 64, 128, 256, 320, 320],
        kernel_size=[3, 3, 3, 3, 3, 3],
        strides=[1, 2, 2, 2, 2, 2],
        norm="instance",
        deep_supervision=True,
        deep_supr_num=4,
        res_block=False,
    ),
}
# nnU-Net v2's default 3d_fullres PlainConvUNet as its planner makes it for BraTS (128^3 at 1 mm):
# ``nnunet`` with a bias in the decoder's transposed convolutions (dynamic_network_architectures puts
# one there; MONAI's DynUNet has none by default). What `plgg-fl import-nnunet` maps a standard
# BraTS model onto, so the federated pipeline can start from it by preset name.
PRESETS["nnunet_v2"] = {**copy.deepcopy(PRESETS["nnunet"]), "trans_bias": True}

#: Arguments every preset has, with these values unless the preset or an override sets them.
_COMMON_DEFAULTS: dict[str, Any] = {"in_channels": 1, "out_channels": 2, "dropout": None, "trans_bias": False}

_NORMS = {
    "instance": ("INSTANCE", {"affine": True}),
    "batch": ("BATCH", {"affine": True}),
}


def preset_args(preset: str, **overrides: Any) -> dict[str, Any]:
    """The resolved architecture kwargs of ``preset`` with ``overrides`` applied (plain values)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    args = copy.deepcopy(PRESETS[preset])
    for k, v in _COMMON_DEFAULTS.items():
        args.setdefault(k, v)
    unknown = set(overrides) - set(args)
    if unknown:
        raise TypeError(f"unknown PlggUNet argument(s): {', '.join(sorted(unknown))}")
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args


def dynunet_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """MONAI ``DynUNet`` keyword arguments (plain values, JSON-safe) for resolved preset ``args``.

    PlggUNet builds its DynUNet from these; ``plgg-fl export --format monai-bundle`` writes them
    into the bundle's config, so MONAI's own DynUNet rebuilds the same network.
    """
    norm, norm_args = _NORMS[args["norm"]]
    return dict(
        spatial_dims=3,
        in_channels=int(args["in_channels"]),
        out_channels=int(args["out_channels"]),
        kernel_size=list(args["kernel_size"]),
        strides=list(args["strides"]),
        upsample_kernel_size=list(args["strides"][1:]),
        filters=list(args["filters"]),
        dropout=args["dropout"],
        norm_name=[norm, dict(norm_args)],
        act_name=["leakyrelu", {"inplace": True, "negative_slope": 0.01}],
        deep_supervision=bool(args["deep_supervision"]),
        deep_supr_num=int(args["deep_supr_num"]),
        res_block=bool(args["res_block"]),
        trans_bias=bool(args.get("trans_bias", False)),
    )


class InstanceNorm3dNDHWC(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last input channels-last, at channels-last speed.

    PyTorch's instance norm reshapes its input to one batch of ``B * C`` channels, which turns a
    ``channels_last_3d`` tensor into a strided copy and back (on CPU it made a channels-last nnunet
    window ~2x slower than the standard layout, so channels-last did not pay). For such an input this
    computes the same normalisation (per sample and channel over space, biased variance, the same eps
    and affine weight and bias) as ``F.group_norm`` with one group per channel, which has a
    channels-last kernel. A standard-layout input, and running statistics, take ``nn.InstanceNorm3d``'s
    own path unchanged; the parameters and their state-dict names are ``nn.InstanceNorm3d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 5 and not self.track_running_stats and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last_3d)):
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


def _channels_last_norms(model: nn.Module) -> None:
    """Replace every plain ``nn.InstanceNorm3d`` in ``model`` by :class:`InstanceNorm3dNDHWC` (same parameters)."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.InstanceNorm3d:
            new = InstanceNorm3dNDHWC(module.num_features, eps=module.eps, momentum=module.momentum,
                                      affine=module.affine, track_running_stats=module.track_running_stats)
            new.load_state_dict(module.state_dict())
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class PlggUNet(DynUNet):
    """3D U-Net (MONAI DynUNet) for whole-tumour segmentation; see the module docstring for layout.

    ``PlggUNet(preset="small", **overrides)``: every argument is a plain value (str, int, bool,
    list), so NVFlare's job export can rebuild it from ``model.init_args``. Overrides: ``filters``,
    ``kernel_size``, ``strides``, ``norm`` ("instance" | "batch"), ``deep_supervision``,
    ``deep_supr_num``, ``res_block``, ``in_channels``, ``out_channels``, ``dropout``, ``trans_bias`` (a bias
    in the decoder's transposed convolutions; default False, True in ``nnunet_v2``). ``kernel_size`` and
    ``strides`` take one value per level, each an int or a per-axis list (anisotropic levels).
    Instance norms are :class:`InstanceNorm3dNDHWC` (``nn.InstanceNorm3d`` for standard-layout tensors).
    """

    def __init__(self, preset: str = "small", **overrides: Any):
        args = preset_args(preset, **overrides)
        super().__init__(**dynunet_kwargs(args))
        del self.skip_layers  # aliases of the blocks below; forward() walks them explicitly
        _channels_last_norms(self)  # channels-last inference on CPU (engine.infer) needs a channels-last norm
        self.preset = preset
        self.init_args: dict[str, Any] = {"preset": preset, **copy.deepcopy(overrides)}
        self.arch: dict[str, Any] = args
        self.encoder_frozen = False

    @property
    def axis_divisors(self) -> tuple[int, int, int]:
        """Per axis, what that patch side must be a multiple of (the product of the level strides on it)."""
        d = [1, 1, 1]
        for s in self.arch["strides"]:
            for axis, si in enumerate([s] * 3 if isinstance(s, int) else s):
                d[axis] *= int(si)
        return d[0], d[1], d[2]

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this (product of the strides; the largest axis's where levels
        stride the axes differently - :attr:`axis_divisors` gives each axis's own)."""
        return max(self.axis_divisors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see module docstring
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        h = self.bottleneck(skips[-1])
        n_up = len(self.upsamples)
        heads: list[torch.Tensor] = []
        for i, up in enumerate(self.upsamples):  # deepest first
            h = up(h, skips[-1 - i])
            level = n_up - 1 - i  # 0 = full resolution
            if self.deep_supervision and self.training and 0 < level <= len(self.deep_supervision_heads):
                heads.append(self.deep_supervision_heads[level - 1](h))
        out = self.output_block(h)
        if self.training and self.deep_supervision:
            heads.reverse()  # highest resolution first
            sz = out.shape[2:]
            ups = [nn.functional.interpolate(t, size=sz, mode="nearest") if t.shape[2:] != sz else t for t in heads]
            return torch.stack([out, *ups], dim=1)
        return out

    def train(self, mode: bool = True) -> "PlggUNet":
        """As nn.Module.train, but a frozen encoder's norm layers stay in eval mode (stats frozen)."""
        super().train(mode)
        if mode and self.encoder_frozen:
            for name, module in self.named_modules():
                if name.startswith(tuple(p.rstrip(".") for p in ENCODER_PREFIXES)):
                    module.eval()
        return self


def parameter_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of ``PlggUNet(preset)``, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in PlggUNet(preset=preset).state_dict().items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_decoder_keys(model: nn.Module) -> tuple[list[str], list[str]]:
    """Partition ``model.state_dict()`` keys into (encoder keys, decoder keys), in state-dict order.

    Raises ValueError if a key belongs to neither part (so a new layer cannot slip through silently).
    """
    enc, dec, other = [], [], []
    for k in model.state_dict().keys():
        if k.startswith(ENCODER_PREFIXES):
            enc.append(k)
        elif k.startswith(DECODER_PREFIXES):
            dec.append(k)
        else:
            other.append(k)
    if other:
        raise ValueError(f"state-dict keys in neither encoder nor decoder: {other[:5]}")
    return enc, dec


def load_received_weights(model: nn.Module, state: dict[str, torch.Tensor], partial_keys: list[str] | None = None) -> str:
    """Load weights received from elsewhere (a federation's global model) into ``model``, in place.

    ``state`` must hold every ``model.state_dict()`` key with its shape (returns ``"full"``) or, where
    ``partial_keys`` is given (stage 3: the decoder keys), exactly those keys (returns ``"partial"``;
    the other tensors keep their values). Anything else raises ValueError naming the missing and
    unexpected keys: a model evaluated or trained with half its weights left random looks like a
    result and is not one. A shape mismatch raises PyTorch's RuntimeError naming the tensor.
    """
    expected, got = set(model.state_dict()), set(state)
    if got == expected:
        model.load_state_dict(state, strict=True)
        return "full"
    if partial_keys is not None and got == set(partial_keys):
        model.load_state_dict(state, strict=False)
        return "partial"
    missing, unexpected = sorted(expected - got), sorted(got - expected)

    def few(keys: list[str]) -> str:
        return f"{len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"

    raise ValueError(f"received weights do not fit this {type(model).__name__}: missing {few(missing)}, unexpected "
                     f"{few(unexpected)}" + ("" if partial_keys is None else f"; only the {len(partial_keys)} decoder "
                                             "tensors may be sent alone") + ". Is the job's preset the model's?")


def freeze_encoder(model: PlggUNet) -> PlggUNet:
    """Stage 3: encoder parameters get ``requires_grad=False`` and its norm layers stay in eval mode.

    Instance norm (the presets' default) keeps no running stats; with ``norm="batch"`` the running
    mean/var are kept frozen because ``PlggUNet.train()`` leaves encoder modules in eval mode.
    Build the optimizer after freezing (``Trainer(freeze_encoder=True)`` does).
    """
    enc, _ = encoder_decoder_keys(model)
    enc_set = set(enc)
    for name, p in model.named_parameters():
        if name in enc_set:
            p.requires_grad_(False)
    model.encoder_frozen = True
    model.train(model.training)
    return model
