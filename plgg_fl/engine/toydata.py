"""Tiny synthetic T2-like volumes for tests and benchmarks (no dependency on plgg_fl.synth), and a model
briefly trained on them.

One generator, :func:`toy_volume`: a noisy "brain" ellipsoid (~100) on a zero background with a brighter
spherical "tumour" (~180) at a random position inside it, on a grid of any shape and spacing (mm). Not
realistic; just enough for a tiny network to learn "bright blob = tumour" in a few dozen steps. Two ways
to lay it out:

* :func:`write_toy_case` - engine tests: NIfTI files, the array as generated, optionally flipped axes in
  the affine only (non-RAS affines, e.g. LPS);
* :func:`blob_volume` - predict tests and the predict benchmark: arrays reoriented to any axis order and
  direction (``axcodes``) with an affine to the same world positions, drawn with :data:`BLOB` constants.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: :func:`toy_volume` constants of :func:`blob_volume`, the predict tests' and benchmark's volumes (kept
#: as they were, so are their data and the benchmark's published figures)
BLOB = {"radius_frac": (0.13, 0.2), "offset_frac": 0.45, "noise_sd": 8.0}


def toy_volume(
    shape: tuple[int, int, int] = (40, 40, 40),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    tumour_radius_mm: float | None = None,
    *,
    brain_semi_mm: tuple[float, float, float] | None = None,
    radius_frac: tuple[float, float] = (0.12, 0.2),
    offset_frac: float = 0.5,
    noise_sd: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [X, Y, Z], mask uint8 [X, Y, Z]) on a grid of ``shape`` voxels at ``spacing_mm``.

    ``brain_semi_mm``: the brain ellipsoid's semi-axes (mm; default 42% of the field of view).
    ``tumour_radius_mm``: default drawn uniformly in ``radius_frac`` x the field of view's smallest side.
    The tumour centre is the brain's centre moved by up to ``offset_frac`` x (semi-axis - radius) along
    each axis; ``noise_sd``: the Gaussian noise on brain and tumour intensities."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing_mm, dtype=float)
    ext = np.asarray(shape) * sp  # mm
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)], indexing="ij", sparse=True)
    centre = ext / 2
    semi = np.asarray(brain_semi_mm, float) if brain_semi_mm is not None else ext * 0.42
    brain = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi)) <= 1.0
    r = tumour_radius_mm if tumour_radius_mm is not None else float(rng.uniform(*radius_frac) * ext.min())
    tc = centre + rng.uniform(-1, 1, 3) * np.maximum(semi - r, 0) * offset_frac
    tumour = (sum((g - c) ** 2 for g, c in zip(grids, tc)) <= r * r) & brain
    img = np.where(brain, 100.0 + rng.normal(0, noise_sd, brain.shape), 0.0)
    img[tumour] = 180.0 + rng.normal(0, noise_sd, int(tumour.sum()))
    return img.astype(np.float32), tumour.astype(np.uint8)


def affine_for(spacing_mm, shape, flip: tuple[bool, bool, bool] = (False, False, False)) -> np.ndarray:
    """Diagonal affine with ``spacing_mm``, the grid centred on the origin; flipped axes get a negative step
    (LPS-like when x, y flip)."""
    aff = np.eye(4)
    for i, (s, f, n) in enumerate(zip(spacing_mm, flip, shape)):
        aff[i, i] = -s if f else s
        aff[i, 3] = (n - 1) * s if f else 0.0
    aff[:3, 3] -= np.asarray(shape) * np.asarray(spacing_mm) / 2
    return aff


def blob_volume(
    shape_ras: tuple[int, int, int] = (40, 40, 40),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    axcodes: tuple[str, str, str] = ("R", "A", "S"),
    tumour_radius_mm: float | None = None,
    brain_semi_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, tumour uint8, affine) of :func:`toy_volume` with the :data:`BLOB` constants, stored in
    ``axcodes`` order (e.g. ``("P", "S", "L")``).

    ``shape_ras`` / ``spacing_mm`` describe the grid in RAS axis order (voxels, mm); the arrays returned
    are reoriented to ``axcodes`` and the affine maps them to the same world positions."""
    img, tumour = toy_volume(shape_ras, spacing_mm, seed, tumour_radius_mm, brain_semi_mm=brain_semi_mm, **BLOB)
    aff = affine_for(spacing_mm, shape_ras)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(axcodes))
    img_o = nib.orientations.apply_orientation(img, ornt)
    tum_o = nib.orientations.apply_orientation(tumour, ornt)
    aff_o = aff @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    return np.ascontiguousarray(img_o), np.ascontiguousarray(tum_o), aff_o


def save_case(out_dir: str | Path, key: str, img: np.ndarray, seg: np.ndarray, affine: np.ndarray, label_value: int = 1) -> dict[str, str]:
    """Write ``<key>_img.nii.gz`` and ``<key>_seg.nii.gz`` (``seg`` x ``label_value``); returns ``{image, label, key}`` paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ip, lp = out / f"{key}_img.nii.gz", out / f"{key}_seg.nii.gz"
    nib.save(nib.Nifti1Image(img, affine), str(ip))
    nib.save(nib.Nifti1Image((seg * label_value).astype(np.uint8), affine), str(lp))
    return {"image": str(ip), "label": str(lp), "key": key}


def write_toy_case(
    out_dir: str | Path,
    key: str,
    seed: int = 0,
    shape=(40, 40, 40),
    spacing_mm=(1.5, 1.5, 1.5),
    flip=(False, False, False),
    label_value: int = 1,
) -> dict[str, str]:
    """:func:`toy_volume` (default constants) written by :func:`save_case`, ``flip`` in its affine only."""
    img, seg = toy_volume(shape, spacing_mm, seed)
    return save_case(out_dir, key, img, seg, affine_for(spacing_mm, shape, flip), label_value)


def train_blob_model(
    out: str | Path, preset: str = "tiny", steps: int = 40, n_cases: int = 4, seed: int = 0, blob_kw: dict | None = None, **cfg_overrides
) -> Path:
    """Train ``preset`` for ``steps`` steps on ``n_cases`` blob cases (``blob_kw`` -> :func:`blob_volume`);
    save an engine checkpoint at ``out``. ``cfg_overrides`` go to ``TrainConfig.for_preset``."""
    import torch

    from plgg_fl.engine.checkpoint import save_checkpoint
    from plgg_fl.engine.config import TrainConfig
    from plgg_fl.engine.networks import PlggUNet
    from plgg_fl.engine.train import Trainer

    out = Path(out)
    data = out.parent / f"{out.stem}_blobs"
    cases = [save_case(data, f"blob{i}", *blob_volume(seed=seed + i, **(blob_kw or {}))) for i in range(n_cases)]
    # fp32 training: with the engine's cpu_bf16="auto", 40 steps of `small` learned nothing on blobs
    kw = dict(augment=False, foreground_ratio=0.5, lr=0.01, optimizer="adamw", max_steps=steps, seed=seed, device="cpu", cpu_bf16=False)
    kw.update(cfg_overrides)
    cfg = TrainConfig.for_preset(preset, **kw)
    torch.manual_seed(seed)
    model = PlggUNet(preset)
    trainer = Trainer(model, cfg, cases, progress=False)
    trainer.train_steps(steps, progress=False)
    return save_checkpoint(out, trainer.model, cfg, step=trainer.step, meta={"stage": "toy", "sites": ["blobs"],
                           "training_data": {"blobs": "synthetic blob volumes (plgg_fl.engine.toydata; not patient data)"}})
