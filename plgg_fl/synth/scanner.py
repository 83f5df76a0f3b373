"""Per-site "scanner": field of view, voxel grid, T2 contrast, bias field, noise and intensity scale.

Each site differs on purpose so that adult -> pediatric and site -> site domain shift is real:

=========  ==============  ================  =====  ======  =========  ==========  =======
site       FOV (mm)        spacing factor    gamma  bias    noise      scale       dtype
=========  ==============  ================  =====  ======  =========  ==========  =======
brats      240x240x155     1 x 1 x 1         ~1.0   ±15 %   2-5 %      300-3000    int16
cbtn       230x230x176     1 x 1 x 1.6       0.85   ±25 %   2 %        ~1 (float)  float32
dfci_bch   220x220x150     1 x 1 x 2.5       1.2    ±30 %   5 %        ~4000       int16
=========  ==============  ================  =====  ======  =========  ==========  =======

Spacing in mm = base spacing (``size``'s default or ``--spacing``) x spacing factor, so
``dfci_bch`` has thick axial slices. Noise is Rician with sigma given as a fraction of the CSF
signal. BraTS is multi-institutional, so its gamma, noise and scale vary per case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from plgg_fl.synth.grid import smooth_noise


@dataclass(frozen=True)
class ScannerProfile:
    """Acquisition of one site. Lengths in mm; intensities relative to CSF = 1 before ``scale``."""

    fov_mm: tuple[float, float, float]
    spacing_factor: tuple[float, float, float]
    t2_weights: tuple[float, float, float]  # signal of (CSF, GM, WM)
    gamma: tuple[float, float]  # uniform range per case
    bias: float  # std of the log bias field
    noise: tuple[float, float]  # Rician sigma range, fraction of CSF signal
    scale: tuple[float, float]  # CSF intensity in stored units, uniform range per case
    dtype: str  # stored image dtype

    def spacing(self, base_mm: float) -> tuple[float, float, float]:
        return tuple(round(base_mm * f, 4) for f in self.spacing_factor)

    def shape(self, base_mm: float) -> tuple[int, int, int]:
        return tuple(max(8, int(round(f / s))) for f, s in zip(self.fov_mm, self.spacing(base_mm)))

    def affine(self, base_mm: float) -> np.ndarray:
        """RAS voxel -> world affine, grid centre at the world origin."""
        sp = np.asarray(self.spacing(base_mm))
        shape = np.asarray(self.shape(base_mm))
        aff = np.diag([*sp, 1.0])
        aff[:3, 3] = -(shape - 1) / 2.0 * sp
        return aff


PROFILES: dict[str, ScannerProfile] = {
    "brats": ScannerProfile((240, 240, 155), (1, 1, 1), (1.0, 0.46, 0.30), (0.9, 1.1), 0.15, (0.02, 0.05), (300, 3000), "int16"),
    "cbtn": ScannerProfile((230, 230, 176), (1, 1, 1.6), (1.0, 0.52, 0.36), (0.82, 0.88), 0.25, (0.015, 0.025), (0.8, 1.2), "float32"),
    "dfci_bch": ScannerProfile((220, 220, 150), (1, 1, 2.5), (1.0, 0.42, 0.27), (1.15, 1.25), 0.30, (0.045, 0.055), (3500, 4500), "int16"),
}


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int], std: float) -> np.ndarray:
    """Smooth multiplicative field exp(std * g), g a random 4^3 lattice upsampled; float32, median ~1."""
    return np.exp(np.float32(std) * smooth_noise(rng, shape, nodes=4))


def acquire(clean: np.ndarray, brain: np.ndarray, profile: ScannerProfile, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Turn a clean CSF-relative T2 volume into a stored scan: bias, gamma, Rician noise, scale, zero background.

    Returns the image (``profile.dtype``) and the per-case acquisition parameters drawn.
    """
    gamma = float(rng.uniform(*profile.gamma))
    sigma = float(rng.uniform(*profile.noise))
    scale = float(rng.uniform(*profile.scale))
    img = np.power(np.clip(clean, 0, None), gamma, dtype=np.float32)
    img *= bias_field(rng, clean.shape, profile.bias)
    inside = img[brain]
    n1 = rng.standard_normal(inside.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(inside.shape, dtype=np.float32) * np.float32(sigma)
    img = np.zeros(clean.shape, np.float32)
    img[brain] = np.sqrt((inside + n1) ** 2 + n2**2) * np.float32(scale)
    if np.dtype(profile.dtype).kind == "i":
        img = np.clip(np.round(img), 0, np.iinfo(profile.dtype).max).astype(profile.dtype)
    else:
        img = img.astype(profile.dtype)
    return img, {"gamma": round(gamma, 4), "noise": round(sigma, 4), "scale": round(scale, 4)}
