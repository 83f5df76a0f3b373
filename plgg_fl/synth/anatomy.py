"""Brain anatomy for the synthetic cohort: the MNI152 2009a template turned into T2 contrast.

The tissue maps come from nilearn's wheel (nothing is downloaded): the skull-stripped T1 (its
non-zero voxels are the brain mask) and the grey/white-matter probability maps, 1 mm isotropic,
197 x 233 x 189 voxels, RAS, MNI origin at voxel (98, 134, 72). CSF probability is taken as
``brain - GM - WM`` (clipped to [0, 1]). A T2 image is a weighted sum of the three tissue maps
(CSF bright, GM mid, WM dark), zero outside the brain like BraTS' skull-stripped scans.

Coordinates: all public functions here speak MNI millimetres (x right, y anterior, z superior).
Everything loaded or derived is cached per process (:func:`functools.lru_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
#: MNI coordinate (mm) of the centre of the template's brain bounding box.
BRAIN_CENTRE_MNI = (0.0, -17.0, 5.0)
#: a T2 template sampled (linearly) above this value is inside the brain; edge voxels hold >= ~0.13
BRAIN_THRESHOLD = 0.06


@dataclass(frozen=True)
class Tissues:
    """Tissue probability maps on the template grid (float32, 0..1) and the grid's affine (mm)."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # soft brain mask 0..1
    affine: np.ndarray  # voxel index -> MNI mm

    @property
    def origin_mm(self) -> np.ndarray:
        return self.affine[:3, 3]


def template_dir() -> Path:
    """nilearn's bundled data folder holding the MNI152 2009a maps."""
    import nilearn

    path = Path(nilearn.__file__).parent / "datasets" / "data"
    missing = [f for f in _FILES.values() if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"nilearn at {path} lacks the MNI152 maps {missing}; install nilearn>=0.10")
    return path


@lru_cache(maxsize=1)
def load_tissues() -> Tissues:
    """Load the template once per process: CSF/GM/WM probabilities and a soft brain mask."""
    import nibabel as nib

    d = template_dir()
    imgs = {k: nib.load(str(d / f)) for k, f in _FILES.items()}
    arr = {k: np.asarray(im.dataobj, dtype=np.float32) / 255.0 for k, im in imgs.items()}
    hard = arr["t1"] > 0
    brain = ndimage.gaussian_filter(hard.astype(np.float32), 0.6)
    gm = arr["gm"] * brain
    wm = arr["wm"] * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    for a in (gm, wm, csf, brain):
        a.flags.writeable = False
    return Tissues(csf=csf, gm=gm, wm=wm, brain=brain, affine=imgs["t1"].affine.astype(np.float64))


@lru_cache(maxsize=8)
def t2_template(weights: tuple[float, float, float], blur_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """T2 contrast on the template grid: ``wc*CSF + wg*GM + ww*WM`` (CSF-relative units, 0 outside brain).

    ``weights`` = (CSF, GM, WM) signal; ``blur_mm`` is the FWHM (mm, per axis) of the acquisition's
    point spread beyond the template's 1 mm, so a coarse or thick-slice grid sampled from it is not
    aliased (partial-volume effect of thick slices).
    """
    t = load_tissues()
    wc, wg, ww = weights
    img = (wc * t.csf + wg * t.gm + ww * t.wm).astype(np.float32)
    sigma = [np.sqrt(max(b * b - 1.0, 0.0)) / 2.355 for b in blur_mm]
    brain = t.brain
    if any(s > 0.05 for s in sigma):
        img = ndimage.gaussian_filter(img, sigma)
        brain = ndimage.gaussian_filter(brain, sigma)
    img[brain < 0.5] = 0.0  # skull-stripped: exactly zero outside the brain (see BRAIN_THRESHOLD)
    img.flags.writeable = False
    return img


def sample(volume: np.ndarray, coords_mm: tuple[np.ndarray, np.ndarray, np.ndarray], order: int = 1) -> np.ndarray:
    """Sample a template-grid ``volume`` at MNI mm coordinates ``coords_mm`` (three equal-shape arrays)."""
    o = load_tissues().origin_mm
    idx = [np.asarray(c, dtype=np.float32) - np.float32(o[i]) for i, c in enumerate(coords_mm)]
    return ndimage.map_coordinates(volume, idx, order=order, mode="constant", cval=0.0, prefilter=False)


#: MNI box (mm) searched for the ventricles: (x, y, z) low and high corners
_VENTRICLE_BOX = ((-35, -50, -8), (35, 35, 35))


@lru_cache(maxsize=1)
def ventricle_distance() -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Distance (mm) to the lateral and third ventricles, on a crop of the template grid.

    Ventricles = the three largest connected regions of CSF probability > 0.6 inside a central box.
    Returns (distance float32, the crop as template-grid slices); used to widen the ventricles
    (obstructive hydrocephalus) in some posterior-fossa pLGG cases.
    """
    t = load_tissues()
    o = t.origin_mm
    margin = 12
    crop = tuple(slice(int(a - oo) - margin, int(b - oo) + margin) for a, b, oo in zip(*_VENTRICLE_BOX, o))
    inner = tuple(slice(margin, s.stop - s.start - margin) for s in crop)
    csf = t.csf[crop] > 0.6
    search = np.zeros_like(csf)
    search[inner] = csf[inner]
    lab, n = ndimage.label(search)
    sizes = ndimage.sum(search, lab, range(1, n + 1))
    keep = np.isin(lab, 1 + np.argsort(sizes)[::-1][:3])
    dist = ndimage.distance_transform_edt(~keep).astype(np.float32)
    dist.flags.writeable = False
    return dist, crop


def widen_ventricles(clean: np.ndarray, coords_mm: np.ndarray, widen_mm: float, csf_signal: float) -> np.ndarray:
    """Obstructive hydrocephalus, crudely: tissue within ``widen_mm`` of the ventricles (template mm,
    sampled at ``coords_mm`` (3, ...)) becomes CSF, with a 1.5 mm partial-volume ramp. In place; returns ``clean``."""
    dist, crop = ventricle_distance()
    idx = np.asarray(coords_mm, dtype=np.float32) - (load_tissues().origin_mm + [s.start for s in crop]).astype(np.float32)[:, None, None, None]
    inside = np.ones(clean.shape, bool)
    for i, s in enumerate(crop):
        inside &= (idx[i] >= 0) & (idx[i] <= s.stop - s.start - 1)
    if not inside.any():
        return clean
    d = ndimage.map_coordinates(dist, idx[:, inside], order=1, mode="nearest")
    w = np.clip((widen_mm - d) / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)
    vals = clean[inside]
    clean[inside] = np.where(vals > BRAIN_THRESHOLD, vals * (1 - w) + np.float32(csf_signal) * w, vals)
    return clean
