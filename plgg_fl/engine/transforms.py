"""MONAI transform chains: one preprocessing chain shared by training and inference, plus augmentation.

Preprocessing (deterministic, cached): load -> channel first -> mask binarised (label > 0, BraTS
labels included) -> reorient (RAS) -> resample to ``cfg.spacing_mm`` (image bilinear, mask
nearest) -> crop to the bounding box of non-zero image voxels (the brain) -> z-score over non-zero
voxels. Inference runs the same chain on the image alone and inverts it (MONAI ``Invertd``) so
predictions come back in the input's voxel grid and affine.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    SpatialPadd,
    Spacingd,
)

from plgg_fl.engine.config import TrainConfig

IMAGE, LABEL = "image", "label"
#: Every image is read by nibabel, whatever other readers are installed (ITK would read another affine).
READER = "NibabelReader"

# MONAI's LoadImage instantiates every reader it knows. With pydicom installed (highdicom needs it),
# its GPU DICOM decoder plugin then says at each instantiation that nvImageCodec is missing. The
# engine reads NIfTI with nibabel only, so the message tells a user nothing: keep it out of logs.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


def preprocessing_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records about preprocessing (plain values)."""
    return {
        "orientation": cfg.orientation,
        "spacing_mm": list(cfg.spacing_mm) if cfg.spacing_mm else None,
        "crop_to_brain": cfg.crop_to_brain,
        "normalisation": "z-score over non-zero voxels, per image (NormalizeIntensityd nonzero=True)",
        "mask": "foreground = label > 0",
        "image_interp": "bilinear",
        "mask_interp": "nearest",
    }


def preprocess(cfg: TrainConfig, with_label: bool = True, load: bool = True) -> Compose:
    """The deterministic chain. Keys ``image`` (and ``label``) hold file paths if ``load`` else MetaTensors."""
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    t: list = []
    if load:
        t.append(LoadImaged(keys=keys, reader=READER, ensure_channel_first=True, image_only=True))
    if with_label:
        t.append(AsDiscreted(keys=LABEL, threshold=0.5))  # integer labels: > 0.5 == > 0
    t += [EnsureTyped(keys=keys, dtype="float32", track_meta=True), Orientationd(keys=keys, axcodes=cfg.orientation, labels=None)]
    if cfg.spacing_mm:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        t.append(Spacingd(keys=keys, pixdim=tuple(cfg.spacing_mm), mode=modes))
    if cfg.crop_to_brain:
        t.append(CropForegroundd(keys=keys, source_key=IMAGE, allow_smaller=True))
    t.append(NormalizeIntensityd(keys=IMAGE, nonzero=True, channel_wise=True))
    return Compose(t)


def sample_patches(cfg: TrainConfig) -> list:
    """Pad to the patch size, then draw one ``cfg.patch_size`` patch, ``cfg.foreground_ratio`` of the
    time centred on a tumour voxel."""
    keys = [IMAGE, LABEL]
    patch = tuple(cfg.patch_size)
    r = float(cfg.foreground_ratio)
    return [
        SpatialPadd(keys=keys, spatial_size=patch),
        RandCropByPosNegLabeld(
            keys=keys, label_key=LABEL, spatial_size=patch, pos=r, neg=1.0 - r, num_samples=1, image_key=None
        ),
    ]


def augmentations(level: str) -> list:
    """The random spatial / intensity transforms of an augmentation ``level`` (on a sampled patch).

    ``nnunet``: nnU-Net v1's default set and probabilities where MONAI has the transform (rotation
    +-30 deg, zoom 0.7-1.3, noise, blur, brightness, contrast, low resolution, gamma, mirroring).
    ``light``: left-right mirroring (RAS axis 0; the other mirrorings put the posterior fossa on
    top), brightness and gamma only - no resampling of the patch, so it costs almost nothing on a
    CPU (docs/learning.md). ``off``: none.
    """
    keys = [IMAGE, LABEL]
    flips = [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
    if level == "off":
        return []
    if level == "light":
        return [
            RandScaleIntensityd(keys=IMAGE, prob=0.15, factors=0.25),
            RandAdjustContrastd(keys=IMAGE, prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
            flips[0],
        ]
    if level != "nnunet":
        raise ValueError(f"unknown augmentation level {level!r} (nnunet | light | off)")
    rot = math.radians(30)
    return [
        RandAffined(
            keys=keys,
            prob=0.2,
            rotate_range=(rot, rot, rot),
            scale_range=(0.3, 0.3, 0.3),  # zoom 0.7 - 1.3
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandGaussianNoised(keys=IMAGE, prob=0.1, mean=0.0, std=0.1),
        RandGaussianSmoothd(keys=IMAGE, prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys=IMAGE, prob=0.15, factors=0.25),  # brightness x[0.75, 1.25]
        RandScaleIntensityFixedMeand(keys=IMAGE, prob=0.15, factors=0.25, preserve_range=True),  # contrast
        RandSimulateLowResolutiond(keys=IMAGE, prob=0.25, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd(keys=IMAGE, prob=0.3, gamma=(0.7, 1.5), retain_stats=True),  # gamma
        *flips,
    ]


def augment(cfg: TrainConfig, level: str | None = None) -> Compose:
    """Random part of the training chain: patch sampling, augmentation at ``level`` (default
    ``cfg.augment``), then plain float32 tensors."""
    level = cfg.augment if level is None else level
    keys = [IMAGE, LABEL]
    tail = [EnsureTyped(keys=keys, dtype="float32", track_meta=False)]
    return Compose(sample_patches(cfg) + augmentations(level) + tail)


def case_dicts(cases: Sequence[Any]) -> list[dict[str, str]]:
    """Manifest cases (or dicts with image/label) -> MONAI data dicts ``{image, label, key}``."""
    out = []
    for c in cases:
        if isinstance(c, dict):
            out.append({IMAGE: str(c[IMAGE]), LABEL: str(c[LABEL]), "key": str(c.get("key", c[IMAGE]))})
            continue
        if c.primary_mask is None:
            raise ValueError(f"case {c.key} has no reference mask; it cannot be used for training")
        out.append({IMAGE: str(c.image), LABEL: str(c.primary_mask), "key": c.key})
    return out
