"""Sliding-window inference returning masks in the input image's own voxel grid and affine.

Path: load -> the training preprocessing chain (reorient, resample, crop to brain, z-score) ->
MONAI ``sliding_window_inference`` (Gaussian weighting, ``cfg.sw_overlap``, ``cfg.sw_batch_size``
windows per forward; channels-last on CPU with bf16, :func:`inference_memory_format`) -> optional
mirror TTA (all 8 axis-flip combinations, softmax averaged) ->
foreground probability inverted back through the chain (MONAI ``Invertd``: un-crop, resample
bilinear, reorient) -> threshold 0.5 -> optional keep-largest-connected-component.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd, KeepLargestConnectedComponent, LoadImage, SpatialResample
from torch import nn
from tqdm.auto import tqdm

from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.metrics import dice
from plgg_fl.engine.train import autocast_context
from plgg_fl.engine.transforms import IMAGE, READER, preprocess


@dataclass
class Prediction:
    """``mask``: uint8 [X, Y, Z] in the input grid; ``affine``: the input's 4x4 voxel->world (mm);
    ``prob``: float32 foreground probability on the same grid (if requested)."""

    mask: np.ndarray
    affine: np.ndarray
    prob: np.ndarray | None = None

    def save(self, path: str | Path, like: str | Path | None = None) -> Path:
        """Write the mask as NIfTI (uint8), copying the header of ``like`` (the input image) if given."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = nib.load(str(like)).header.copy() if like else None
        img = nib.Nifti1Image(self.mask.astype(np.uint8), self.affine, header=header)
        img.set_data_dtype(np.uint8)
        nib.save(img, str(path))
        return path


def _load(image: Any) -> MetaTensor:
    """Path or nibabel image -> MetaTensor [1, X, Y, Z] carrying the affine."""
    if isinstance(image, (str, Path)):
        return LoadImage(reader=READER, image_only=True, ensure_channel_first=True)(str(image))
    if isinstance(image, nib.spatialimages.SpatialImage):
        arr = np.asarray(image.dataobj, dtype=np.float32)
        return MetaTensor(torch.from_numpy(arr)[None], affine=torch.as_tensor(image.affine, dtype=torch.float64))
    raise TypeError(f"image must be a path or a nibabel image, got {type(image).__name__}")


def inference_memory_format(device: torch.device, cfg: TrainConfig) -> torch.memory_format:
    """The memory format the network runs in at inference: ``channels_last_3d`` where ``cfg.channels_last``,
    or on CPU with bf16 autocast (``cfg.use_cpu_bf16()``); the standard layout elsewhere.

    On CPU with bf16 a channels-last nnunet window (oneDNN's NDHWC kernels, instance norm kept
    channels-last by :class:`plgg_fl.engine.networks.InstanceNorm3dNDHWC`) took 2.97 s instead of 4.14 s
    (2 windows per forward, 2 threads; docs/inference.md). fp32 (the engine's unoptimised reference path)
    and CUDA stay in the standard layout unless ``cfg.channels_last`` asks otherwise.
    """
    if cfg.channels_last or (device.type == "cpu" and cfg.use_cpu_bf16()):
        return torch.channels_last_3d
    return torch.contiguous_format


@contextlib.contextmanager
def model_memory_format(model: nn.Module, fmt: torch.memory_format) -> Iterator[nn.Module]:
    """``model`` with its 5-D parameters and buffers (the conv weights) in ``fmt`` for the ``with`` block,
    restored afterwards: an inference call leaves a model that is being trained as it found it.

    The weights' layout is what makes oneDNN run a 1-channel input channels-last (such an input's
    layout is ambiguous, so converting the windows alone changes nothing).
    """
    changed: list[tuple[torch.Tensor, torch.Tensor]] = []
    if fmt is not torch.contiguous_format:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, also inside an inference_mode block
            for t in itertools.chain(model.parameters(), model.buffers()):
                if t.dim() != 5:
                    continue
                laid = torch.empty_like(t.data, memory_format=fmt)  # fmt's strides also where a size-1 dim makes
                if laid.stride() != t.stride():  # the layout ambiguous (the first conv's 1-channel weight)
                    changed.append((t, t.data))
                    t.data = laid.copy_(t.data)
    try:
        yield model
    finally:
        for t, data in changed:
            t.data = data


def sliding_window_probs(
    model: nn.Module, x: torch.Tensor, cfg: TrainConfig, device: torch.device, tta: bool = False, progress: bool = False
) -> torch.Tensor:
    """Softmax probabilities [1, C, X, Y, Z] (on CPU) for a preprocessed image ``x`` [1, 1, X, Y, Z]."""
    x = x.to(device)
    fmt = inference_memory_format(device, cfg)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [c for r in range(4) for c in itertools.combinations((2, 3, 4), r)]
    acc = None

    def predictor(w: torch.Tensor) -> torch.Tensor:  # autocast the network only; blending stays fp32
        with autocast_context(device, cfg):
            return model(w.contiguous(memory_format=fmt)).float()

    with model_memory_format(model, fmt), torch.inference_mode():
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            logits = sliding_window_inference(
                xi,
                roi_size=tuple(cfg.patch_size),
                sw_batch_size=cfg.sw_batch_size,
                predictor=predictor,
                overlap=cfg.sw_overlap,
                mode="gaussian",
                progress=progress,
            )
            p = torch.softmax(logits, dim=1)
            p = torch.flip(p, axes) if axes else p
            acc = p if acc is None else acc + p
    return (acc / len(flips)).cpu()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module with neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def predict(
    model: nn.Module,
    image: Any,
    cfg: TrainConfig,
    *,
    tta: bool | None = None,
    keep_largest: bool | None = None,
    return_prob: bool = False,
    progress: bool = False,
    hot_box: bool = False,
) -> Prediction:
    """Segment one image (path or nibabel image). ``tta``/``keep_largest`` default to the config's.

    The model is put in eval mode (restored afterwards) and run on the device its parameters are on.
    ``hot_box`` (no ``return_prob``): resample the foreground probability back only where the mask can
    be (:func:`invert_hot_box`); the mask is the full inversion's up to float rounding (~1e-7), at a
    fraction of its cost.
    """
    tta = cfg.tta if tta is None else tta
    keep_largest = cfg.keep_largest if keep_largest is None else keep_largest
    raw = _load(image)
    affine = np.asarray(raw.affine, dtype=np.float64)
    shape = tuple(raw.shape[1:])
    chain = preprocess(cfg, with_label=False, load=False)
    data = chain({IMAGE: raw})
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        probs = sliding_window_probs(model, data[IMAGE][None], cfg, device, tta=tta, progress=progress)
    finally:
        model.train(was_training)
    fg = MetaTensor(probs[0, 1:2].contiguous(), meta=dict(data[IMAGE].meta))
    prob = invert_hot_box(fg, affine, shape) if hot_box and not return_prob else None
    if prob is None:
        data["pred"] = fg
        inv = Invertd(keys="pred", transform=chain, orig_keys=IMAGE, nearest_interp=False, to_tensor=True)(data)["pred"]
        prob = np.asarray(inv[0].detach().cpu().numpy(), dtype=np.float32)
    if prob.shape != shape:
        raise RuntimeError(f"inverted prediction has shape {prob.shape}, input {shape}")
    mask = (prob > 0.5).astype(np.uint8)
    if keep_largest and mask.any():
        mask = keep_largest_component(mask)
    return Prediction(mask=mask, affine=affine, prob=prob if return_prob else None)


def invert_hot_box(fg: MetaTensor, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Foreground probability [X, Y, Z] on the input grid, exact only where it can exceed 0.5 (0 elsewhere).

    ``fg`` [1, x, y, z] is the probability on the preprocessed grid (its affine maps that grid to world
    mm); ``affine`` / ``shape`` are the input's. A bilinear value > 0.5 needs a coarse voxel > 0.5 in its
    2x2x2 stencil, so only the input voxels that sample the box around the coarse voxels > 0.5 (grown by
    one voxel) are resampled, straight onto the input's own axes (MONAI ``SpatialResample``, bilinear);
    every other voxel is <= 0.5 in the full inversion and 0 here. Returns None (use the full inversion)
    when that box touches the edge of the preprocessed grid, where padding would decide the values.
    """
    hot = np.argwhere(np.asarray(fg[0].detach().cpu()) > 0.5)
    if hot.size == 0:
        return np.zeros(shape, np.float32)
    grid = np.asarray(fg.shape[1:])
    lo, hi = hot.min(0) - 1, hot.max(0) + 2  # coarse voxels [lo, hi): the hot ones and their neighbours
    if (lo < 0).any() or (hi > grid).any():
        return None
    corners = np.array([[x, y, z, 1.0] for x in (lo[0] - 0.5, hi[0] - 0.5) for y in (lo[1] - 0.5, hi[1] - 0.5)
                        for z in (lo[2] - 0.5, hi[2] - 0.5)]).T
    at = (np.linalg.inv(affine) @ np.asarray(fg.affine, dtype=np.float64) @ corners)[:3]  # input voxel indices
    start = np.maximum(np.floor(at.min(1)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(at.max(1)).astype(int) + 2, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    values = SpatialResample(mode="bilinear", padding_mode="border")(
        fg, dst_affine=torch.as_tensor(crop_affine(affine, box)), spatial_size=tuple(int(n) for n in stop - start))
    out = np.zeros(shape, np.float32)
    out[box] = np.asarray(values[0].detach().cpu(), dtype=np.float32)
    return out


def crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Affine of the sub-array ``array[box]``: same axes and spacing, origin moved to the box's corner (mm)."""
    out = np.array(affine, dtype=np.float64, copy=True)
    start = np.array([s.start for s in box], dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ start + out[:3, 3]
    return out


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component of a binary [X, Y, Z] mask (uint8).

    MONAI's KeepLargestConnectedComponent when scikit-image is installed (it needs it); otherwise
    the same operation with scipy.ndimage (full connectivity, as MONAI's default).
    """
    try:
        import skimage.measure  # noqa: F401

        out = KeepLargestConnectedComponent(applied_labels=[1])(torch.from_numpy(mask.astype(np.uint8))[None])[0]
        return np.asarray(out).astype(np.uint8)
    except ImportError:
        from scipy import ndimage

        lab, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if n <= 1:
            return (mask > 0).astype(np.uint8)
        sizes = np.bincount(lab.ravel())[1:]
        return (lab == (1 + int(np.argmax(sizes)))).astype(np.uint8)


def load_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Reference mask -> (bool [X, Y, Z] = label > 0, affine, spacing in mm)."""
    img = nib.load(str(path))
    m = np.asarray(img.dataobj) > 0
    return m, img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def validate(model: nn.Module, cases: Sequence[Any], cfg: TrainConfig, progress: bool = False) -> dict[str, Any]:
    """Mean Dice vs each case's primary mask, predicted in the original grid (sliding window, no TTA).

    Returns ``{"val_dice": mean, "n": cases used, "per_case": {key: dice}}`` (val_dice NaN if no cases).
    """
    per_case: dict[str, float] = {}
    for c in tqdm(cases, desc="validate", disable=not progress, leave=False):
        image, ref, key = (c["image"], c["label"], c.get("key", str(c["image"]))) if isinstance(c, dict) else (
            c.image, c.primary_mask, c.key)
        if ref is None:
            continue
        pred = predict(model, image, cfg, tta=False, keep_largest=cfg.keep_largest)
        per_case[key] = dice(pred.mask, load_mask(ref)[0])
    vals = list(per_case.values())
    return {"val_dice": float(np.mean(vals)) if vals else math.nan, "n": len(vals), "per_case": per_case}
