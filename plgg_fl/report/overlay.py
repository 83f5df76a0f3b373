"""Axial / coronal / sagittal overlays of masks on a T2 image at one point (gallery and review packet).

Volumes are reoriented to RAS (nibabel ``as_closest_canonical``) so every site's scans look the same
way round; each view is drawn with its true voxel aspect (mm), patient's right on the image left
(radiological convention), superior / anterior up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


@dataclass
class Volume:
    """An image (float) and masks (bool) on one RAS voxel grid; ``spacing`` in mm."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]


def load_ras(image_path, masks: dict[str, object]) -> Volume:
    """Image path and ``{name: mask path | nibabel image | array on the image grid}`` -> :class:`Volume` in RAS."""
    img = nib.load(str(image_path))
    can = nib.as_closest_canonical(img)
    out = {}
    for name, m in masks.items():
        if isinstance(m, np.ndarray):
            m = nib.Nifti1Image(m.astype(np.uint8), img.affine)
        elif not hasattr(m, "dataobj"):
            m = nib.load(str(m))
        out[name] = np.asarray(nib.as_closest_canonical(m).dataobj) > 0
    return Volume(np.asarray(can.dataobj, dtype=np.float32), out, tuple(float(z) for z in can.header.get_zooms()[:3]))


def centre_of(vol: Volume, prefer: list[str]) -> tuple[int, int, int]:
    """Voxel centre of mass of the first non-empty mask in ``prefer``, else the volume's centre."""
    for name in prefer:
        m = vol.masks.get(name)
        if m is not None and m.any():
            return tuple(int(round(c)) for c in np.argwhere(m).mean(axis=0))
    return tuple(s // 2 for s in vol.image.shape)


def _views(vol: Volume, c):
    """(name, 2-D slicer, (col spacing, row spacing)) for axial, coronal, sagittal; arrays are [col, row]."""
    sx, sy, sz = vol.spacing
    return [
        ("axial", lambda a: a[:, :, c[2]], (sx, sy)),
        ("coronal", lambda a: a[:, c[1], :], (sx, sz)),
        ("sagittal", lambda a: a[c[0], :, :], (sy, sz)),
    ]


def draw(vol: Volume, centre, styles: dict[str, dict], path: Path, title: str = "", fill: bool = False,
         radiological: bool = True) -> Path:
    """Three views at ``centre`` with each mask in ``styles`` (``{name: {"color", "label"}}``) as a contour
    (and a translucent fill if ``fill``). Writes a PNG at ``path``."""
    lo, hi = np.percentile(vol.image[vol.image > 0] if (vol.image > 0).any() else vol.image, [1, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
    for ax, (name, sl, (dc, dr)) in zip(axes, _views(vol, centre)):
        im = sl(vol.image).T  # rows = second axis
        ext = (0, im.shape[1] * dc, 0, im.shape[0] * dr)
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext, interpolation="nearest")
        for mname, st in styles.items():
            m = vol.masks.get(mname)
            if m is None:
                continue
            s = sl(m).T.astype(float)
            if fill:
                ax.imshow(np.ma.masked_where(s < 0.5, s), cmap=matplotlib.colors.ListedColormap([st["color"]]),
                          alpha=0.25, origin="lower", extent=ext, interpolation="nearest")
            if s.any():
                ax.contour(s, levels=[0.5], colors=[st["color"]], linewidths=1.4, origin="lower", extent=ext)
        if radiological and name in ("axial", "coronal"):
            ax.invert_xaxis()
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=st["color"], lw=2, label=st["label"]) for st in styles.values() if st.get("label")]
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
