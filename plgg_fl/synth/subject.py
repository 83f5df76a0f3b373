"""One synthetic subject's geometry: where each voxel of its scan lies in the template (MNI mm).

A subject is the template brain globally scaled (adults about 0.92-1.02, children about
0.85-0.95), slightly rotated and shifted in the scanner, and warped by a smooth random
displacement field (a 5^3 control lattice, 50 mm apart, cubic-interpolated; a few mm).

World (scanner) coordinates are RAS mm with the grid centre at the origin. The similarity part
``world -> MNI`` is exposed as a 4x4 matrix (what a rigid+scale registration would recover), so
tests can place a mask's centre of mass in template space; the residual warp is a few mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from plgg_fl.synth.anatomy import BRAIN_CENTRE_MNI
from plgg_fl.synth.grid import upsample_linear

_LATTICE_MM = 50.0  # control-point spacing of the random warp (mm)
_LATTICE_N = 5  # control points per axis, covering MNI -100..100 mm


@dataclass(frozen=True)
class Subject:
    """Geometry of one subject. ``scale`` is unitless, ``centre_mni`` in mm, ``warp`` in mm."""

    scale: float
    rotation: np.ndarray  # 3x3, world axes -> template axes
    centre_mni: np.ndarray  # MNI point (mm) at the world origin (grid centre)
    warp: np.ndarray  # (3, N, N, N) displacement control values, mm

    @classmethod
    def random(cls, rng: np.random.Generator, scale_range: tuple[float, float], warp_mm: float = 2.5) -> "Subject":
        """Draw a subject: uniform scale, rotations of a few degrees, shift up to ~5 mm."""
        scale = float(rng.uniform(*scale_range))
        angles = rng.normal(0.0, [3.0, 2.0, 3.0])  # degrees about x (pitch), y (roll), z (yaw)
        rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
        centre = np.asarray(BRAIN_CENTRE_MNI) + rng.normal(0.0, 2.5, 3)
        warp = rng.normal(0.0, warp_mm, (3, _LATTICE_N, _LATTICE_N, _LATTICE_N))
        return cls(scale=scale, rotation=rot, centre_mni=centre, warp=warp)

    def world_to_mni(self) -> np.ndarray:
        """4x4 similarity mapping world mm -> MNI mm (without the small residual warp)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation / self.scale
        m[:3, 3] = self.centre_mni
        return m

    def mni_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_mni())

    def displacement(self, pts_mm: np.ndarray) -> np.ndarray:
        """Warp displacement (mm) at MNI points ``pts_mm`` of shape (3, ...)."""
        idx = (np.asarray(pts_mm) + 100.0) / _LATTICE_MM
        return np.stack(
            [ndimage.map_coordinates(self.warp[i], idx, order=3, mode="nearest") for i in range(3)]
        )

    def coords(self, affine: np.ndarray, shape: tuple[int, int, int], coarse_mm: float = 8.0) -> np.ndarray:
        """MNI mm of every voxel of a grid (voxel -> world ``affine``), shape (3, *shape), float32.

        The linear part is exact; the warp is evaluated on a grid about ``coarse_mm`` apart and
        linearly upsampled (it varies over tens of mm, so this loses nothing visible).
        """
        lin = self.world_to_mni() @ affine
        axes = [np.arange(n, dtype=np.float32) for n in shape]
        out = np.empty((3, *shape), dtype=np.float32)
        for r in range(3):
            out[r] = (
                lin[r, 0] * axes[0][:, None, None]
                + lin[r, 1] * axes[1][None, :, None]
                + lin[r, 2] * axes[2][None, None, :]
                + lin[r, 3]
            )
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        nc = [max(2, int(np.ceil(n * s / coarse_mm)) + 1) for n, s in zip(shape, spacing)]
        cax = [np.linspace(0, n - 1, m) for n, m in zip(shape, nc)]
        grid = np.stack(np.meshgrid(*cax, indexing="ij"))
        coarse_pts = np.tensordot(lin[:3, :3], grid, axes=1) + lin[:3, 3, None, None, None]
        disp = self.displacement(coarse_pts)
        for r in range(3):
            out[r] += upsample_linear(disp[r], shape)
        return out
