"""Toy skull-stripped "T2" volumes and a briefly trained model, for predict tests and the benchmark.

A noisy brain ellipsoid (~100) on a zero background with a bright spherical tumour (~180), laid
out on any grid: spacing in mm, any axis order/direction (``axcodes``, e.g. ``("P", "S", "L")``).
Not realistic; just enough for a tiny network to learn "bright blob = tumour" in a few dozen steps.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def blob_volume(
    shape_ras: tuple[int, int, int] = (40, 40, 40),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    axcodes: tuple[str, str, str] = ("R", "A", "S"),
    tumour_radius_mm: float | None = None,
    brain_semi_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, tumour uint8, affine) stored in ``axcodes`` order.

    ``shape_ras`` / ``spacing_mm`` describe the grid in RAS axis order (voxels, mm); the arrays
    returned are reoriented to ``axcodes`` and the affine maps them to the same world positions.
    ``brain_semi_mm``: the brain ellipsoid's semi-axes (mm; default 42% of the field of view).
    """
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing_mm, float)
    ext = np.asarray(shape_ras) * sp
    g = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape_ras, sp)], indexing="ij", sparse=True)
    centre = ext / 2
    semi = np.asarray(brain_semi_mm, float) if brain_semi_mm is not None else ext * 0.42
    brain = sum(((gi - c) / a) ** 2 for gi, c, a in zip(g, centre, semi)) <= 1.0
    r = tumour_radius_mm or float(rng.uniform(0.13, 0.2) * ext.min())
    tc = centre + rng.uniform(-1, 1, 3) * np.maximum(semi - r, 0) * 0.45
    tumour = (sum((gi - c) ** 2 for gi, c in zip(g, tc)) <= r * r) & brain
    img = np.where(brain, 100.0 + rng.normal(0, 8, brain.shape), 0.0).astype(np.float32)
    img[tumour] = (180.0 + rng.normal(0, 8, int(tumour.sum()))).astype(np.float32)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -ext / 2
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(axcodes))
    img_o = nib.orientations.apply_orientation(img, ornt)
    tum_o = nib.orientations.apply_orientation(tumour.astype(np.uint8), ornt)
    aff_o = aff @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    return np.ascontiguousarray(img_o), np.ascontiguousarray(tum_o), aff_o


def write_blob_case(out_dir: str | Path, key: str, **kw) -> dict[str, str]:
    """Write ``<key>_0000.nii.gz`` (image) and ``<key>_seg.nii.gz``; returns ``{image, label, key}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img, seg, aff = blob_volume(**kw)
    ip, lp = out / f"{key}_0000.nii.gz", out / f"{key}_seg.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(ip))
    nib.save(nib.Nifti1Image(seg, aff), str(lp))
    return {"image": str(ip), "label": str(lp), "key": key}


def train_blob_model(
    out: str | Path, preset: str = "tiny", steps: int = 40, n_cases: int = 4, seed: int = 0, blob_kw: dict | None = None, **cfg_overrides
) -> Path:
    """Train ``preset`` for ``steps`` steps on ``n_cases`` blob cases (``blob_kw`` -> :func:`blob_volume`);
    save an engine checkpoint at ``out``. ``cfg_overrides`` go to ``TrainConfig.for_preset``."""
    from plgg_fl.engine.checkpoint import save_checkpoint
    from plgg_fl.engine.config import TrainConfig
    from plgg_fl.engine.networks import PlggUNet
    from plgg_fl.engine.train import Trainer

    out = Path(out)
    data = out.parent / f"{out.stem}_blobs"
    cases = [write_blob_case(data, f"blob{i}", seed=seed + i, **(blob_kw or {})) for i in range(n_cases)]
    # fp32 training: with the engine's cpu_bf16="auto", 40 steps of `small` learned nothing on blobs
    kw = dict(augment=False, foreground_ratio=0.5, lr=0.01, optimizer="adamw", max_steps=steps, seed=seed, device="cpu", cpu_bf16=False)
    kw.update(cfg_overrides)
    cfg = TrainConfig.for_preset(preset, **kw)
    import torch

    torch.manual_seed(seed)
    model = PlggUNet(preset)
    trainer = Trainer(model, cfg, cases, progress=False)
    trainer.train_steps(steps, progress=False)
    return save_checkpoint(out, trainer.model, cfg, step=trainer.step, meta={"stage": "toy", "sites": ["blobs"],
                           "training_data": {"blobs": "synthetic blob volumes (plgg_fl.predict.toy; not patient data)"}})
