"""Training / inference configuration as one plain-value dataclass (stored in every checkpoint)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import torch

#: Augmentation levels (see :func:`plgg_fl.engine.transforms.augment`).
AUGMENT_LEVELS = ("nnunet", "light", "off")

#: Per-preset defaults for TrainConfig (patch size in voxels at ``spacing_mm``). The CPU presets
#: (``tiny``, ``small``) train with AdamW 3e-3 after a linear warm-up over the first 10 % of the
#: steps, and light augmentation, which reach val Dice 0.85 in a few hundred steps; ``nnunet`` keeps nnU-Net's recipe
#: (SGD 0.01, Nesterov momentum 0.99, full augmentation), right for its long GPU budgets; so does ``nnunet_v2``. Measured in docs/learning.md.
_SHORT_BUDGET = dict(optimizer="adamw", lr=3e-3, warmup_fraction=0.1, augment="light")
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=(32, 32, 32), spacing_mm=(2.0, 2.0, 2.0), batch_size=2, sw_batch_size=4, **_SHORT_BUDGET),
    "small": dict(patch_size=(64, 64, 64), spacing_mm=(2.0, 2.0, 2.0), batch_size=2, sw_batch_size=2, **_SHORT_BUDGET),
    "nnunet": dict(patch_size=(128, 128, 128), spacing_mm=(1.0, 1.0, 1.0), batch_size=2, sw_batch_size=2,
                   optimizer="sgd", lr=0.01, augment="nnunet"),
}
PRESET_DEFAULTS["nnunet_v2"] = dict(PRESET_DEFAULTS["nnunet"])  # the same network but for a decoder bias (networks.py)


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained and how images are preprocessed.

    Units: ``spacing_mm`` in mm (None = keep each image's own grid), ``patch_size`` in voxels at that
    spacing. The preprocessing fields (``spacing_mm``, ``orientation``, ``crop_to_brain``,
    normalisation = z-score over non-zero voxels, mask = label > 0) apply identically at training
    and inference time; :func:`plgg_fl.engine.transforms.preprocessing_settings` lists them.
    """

    preset: str = "small"
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    spacing_mm: tuple[float, float, float] | None = (2.0, 2.0, 2.0)
    orientation: str = "RAS"
    crop_to_brain: bool = True  # crop to the bounding box of non-zero image voxels
    foreground_ratio: float = 1 / 3  # share of patches centred on a tumour voxel
    augment: str = "nnunet"  # "nnunet" (nnU-Net v1's set) | "light" (flips + intensity) | "off"; True/False = nnunet/off
    augment_warmup_steps: int = 0  # train without augmentation for the first N steps, then with ``augment``
    batch_dice: bool = False  # Dice over the whole batch (nnU-Net 3d_fullres) instead of per sample
    # optimisation
    optimizer: str = "sgd"  # "sgd" (Nesterov, nnU-Net) | "adamw"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    warmup_fraction: float = 0.0  # linear LR warm-up over this share of max_steps, then poly (docs/learning.md)
    max_steps: int = 1000  # length of the poly LR schedule (total planned steps)
    grad_clip: float = 12.0  # max grad norm (nnU-Net); 0 = off
    deep_supervision: bool = True  # use the preset's deep-supervision heads in the loss
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # fp16 autocast + GradScaler on CUDA only
    cpu_bf16: bool | str = "auto"  # bf16 autocast on CPU: True | False | "auto" (on iff the CPU has native bf16)
    channels_last: bool = False  # channels_last_3d memory format (training; inference also on CPU with bf16: engine.infer)
    num_workers: int = 0
    cache_rate: float = 1.0  # share of preprocessed training volumes kept in memory (0 = reload every step)
    cache_num_workers: int = 1
    # inference
    sw_batch_size: int = 2
    sw_overlap: float = 0.5
    tta: bool = False
    keep_largest: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "TrainConfig":
        """A config with ``preset``'s defaults (patch, spacing, batch, optimiser, augmentation) and
        ``overrides`` applied."""
        kw: dict[str, Any] = {"preset": preset, **PRESET_DEFAULTS.get(preset, {})}
        kw.update(overrides)
        return cls.from_dict(kw)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> "TrainConfig":
        """A config from partial settings (a job's or a YAML's ``train``): the preset named in them
        (default ``small``) supplies every default they leave out. ``from_dict`` is for complete,
        stored configs (checkpoints)."""
        rest = {k: v for k, v in overrides.items() if k != "preset"}
        return cls.for_preset(str(overrides.get("preset", "small")), **rest)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("patch_size", "spacing_mm"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("patch_size") is not None:
            d["patch_size"] = tuple(int(v) for v in d["patch_size"])
        if d.get("spacing_mm") is not None:
            d["spacing_mm"] = tuple(float(v) for v in d["spacing_mm"])
        if isinstance(d.get("augment"), bool):  # checkpoints before augmentation levels stored a bool
            d["augment"] = "nnunet" if d["augment"] else "off"
        if d.get("augment", "nnunet") not in AUGMENT_LEVELS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_LEVELS)}, got {d['augment']!r}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def use_cpu_bf16(self) -> bool:
        """Resolve ``cpu_bf16``: "auto" -> on where the CPU has native bf16 (avx512_bf16 / AMX), where
        benchmarks/bench_engine.py measured it ~2x faster (2-core AMD EPYC Zen 4); off elsewhere."""
        if isinstance(self.cpu_bf16, str):
            if self.cpu_bf16 != "auto":
                raise ValueError(f"cpu_bf16 must be true, false or 'auto', got {self.cpu_bf16!r}")
            return cpu_has_native_bf16()
        return bool(self.cpu_bf16)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA where available, else CPU; any other name as torch reads it (``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True if /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
