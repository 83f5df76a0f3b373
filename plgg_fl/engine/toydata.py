"""Tiny synthetic T2-like volumes for engine tests and benchmarks (no dependency on plgg_fl.synth).

A "brain" ellipsoid (intensity ~100, noisy) on a zero background, with a brighter spherical
"tumour" (~180) at a random position inside it. Written as NIfTI with a chosen spacing (mm) and
optionally flipped axes (non-RAS affines, e.g. LPS).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def toy_volume(
    shape: tuple[int, int, int] = (40, 40, 40),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    radius_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [X, Y, Z], mask uint8 [X, Y, Z]) on a grid of ``shape`` voxels at ``spacing_mm``."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing_mm, dtype=float)
    ext = np.asarray(shape) * sp  # mm
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)], indexing="ij")
    centre = ext / 2
    semi = ext * 0.42
    brain = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi)) <= 1.0
    r = radius_mm if radius_mm is not None else float(rng.uniform(0.12, 0.2) * ext.min())
    tc = centre + rng.uniform(-1, 1, 3) * np.maximum(semi - r, 0) * 0.5
    tumour = (sum((g - c) ** 2 for g, c in zip(grids, tc)) <= r * r) & brain
    img = np.where(brain, 100.0 + rng.normal(0, 10, shape), 0.0)
    img[tumour] = 180.0 + rng.normal(0, 10, int(tumour.sum()))
    return img.astype(np.float32), tumour.astype(np.uint8)


def affine_for(spacing_mm, shape, flip: tuple[bool, bool, bool] = (False, False, False)) -> np.ndarray:
    """Diagonal affine with ``spacing_mm``; flipped axes get a negative step (LPS-like when x, y flip)."""
    aff = np.eye(4)
    for i, (s, f, n) in enumerate(zip(spacing_mm, flip, shape)):
        aff[i, i] = -s if f else s
        aff[i, 3] = (n - 1) * s if f else 0.0
    aff[:3, 3] -= np.asarray(shape) * np.asarray(spacing_mm) / 2
    return aff


def write_toy_case(
    out_dir: str | Path,
    key: str,
    seed: int = 0,
    shape=(40, 40, 40),
    spacing_mm=(1.5, 1.5, 1.5),
    flip=(False, False, False),
    label_value: int = 1,
) -> dict[str, str]:
    """Write ``<key>_img.nii.gz`` and ``<key>_seg.nii.gz``; returns ``{image, label, key}`` paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img, seg = toy_volume(shape, spacing_mm, seed)
    aff = affine_for(spacing_mm, shape, flip)
    ip, lp = out / f"{key}_img.nii.gz", out / f"{key}_seg.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(ip))
    nib.save(nib.Nifti1Image((seg * label_value).astype(np.uint8), aff), str(lp))
    return {"image": str(ip), "label": str(lp), "key": key}
