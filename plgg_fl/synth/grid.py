"""Fast smooth fields on voxel grids: separable linear upsampling by small interpolation matrices."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) matrix taking m samples at linspace(0, n-1, m) to all n voxel positions (linear)."""
    pos = np.linspace(0, m - 1, n) if n > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, max(m - 2, 0))
    w = (pos - lo).astype(np.float32)
    mat = np.zeros((n, m), np.float32)
    mat[np.arange(n), lo] += 1 - w
    if m > 1:
        mat[np.arange(n), lo + 1] += w
    return mat


def upsample_linear(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of a 3D array whose samples span the grid corner to corner; float32."""
    a, b, c = (_interp_matrix(n, m) for n, m in zip(shape, coarse.shape))
    x = np.tensordot(a, coarse.astype(np.float32), axes=(1, 0))  # (n0, m1, m2)
    x = np.matmul(b, x)  # (n0, n1, m2)
    return np.ascontiguousarray(np.matmul(x, c.T))  # (n0, n1, n2)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], nodes: int = 6) -> np.ndarray:
    """Smooth random field ~N(0, 1): a ``nodes``^3 Gaussian lattice, cubic then linearly upsampled."""
    lattice = rng.normal(0.0, 1.0, (nodes,) * 3)
    fine = [min(n, 4 * nodes) for n in shape]
    mid = ndimage.zoom(lattice, [f / nodes for f in fine], order=3, mode="nearest")
    return upsample_linear(mid, shape)
