"""A PNG with one axial slice per site: the T2 image with the tumour outline (matplotlib contour).

Per site the case (among its first few with a mask) and axial slice with the largest tumour
cross-section is shown, with its primary mask (reference, or first expert); ``docs/img/synth_sites.png`` is made by
``plgg-fl synth OUT --preview PNG``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def _pick(manifest_path: Path, index: int | None = None, candidates: int = 6):
    """Load a case with a mask: ``index`` into those cases, or (None) the one of the first
    ``candidates`` whose tumour has the largest axial cross-section, so the picture shows it well."""
    from plgg_fl.data.manifest import load_manifest

    cases = [c for c in load_manifest(manifest_path).cases if c.masks]
    picks = [cases[min(index, len(cases) - 1)]] if index is not None else cases[:candidates]
    best = None
    for case in picks:
        seg = np.asarray(nib.as_closest_canonical(nib.load(str(case.primary_mask))).dataobj)
        area = (seg > 0).sum(axis=(0, 1))
        if best is None or area.max() > best[0]:
            best = (area.max(), case, seg, int(np.argmax(area)))
    _, case, seg, z = best
    img = nib.as_closest_canonical(nib.load(str(case.image)))
    return case, np.asarray(img.dataobj, np.float32), seg, z, img.header.get_zooms()[:3]


def save_preview(manifests: dict[str, Path], png: str | Path, index: int | None = None) -> Path:
    """Draw one axial slice per site (image in grey, tumour outline in colour) into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    fig, axes = plt.subplots(1, len(manifests), figsize=(4.2 * len(manifests), 4.6), squeeze=False)
    for ax, (site, path) in zip(axes[0], manifests.items()):
        case, img, seg, z, zooms = _pick(Path(path), index)
        sl, ms = img[:, :, z].T, seg[:, :, z].T
        vmax = np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1.0
        ax.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=zooms[1] / zooms[0])
        if (ms > 0).any():
            ax.contour(ms > 0, levels=[0.5], colors="orangered", linewidths=1.2)
            if site == "brats":  # BraTS sub-regions: tumour core (labels 1, 4) and necrosis (1)
                ax.contour(np.isin(ms, (1, 4)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{site}: {case.key}\n{zooms[0]:.1f}x{zooms[1]:.1f}x{zooms[2]:.1f} mm, slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle("plgg-fl synthetic cohort: T2, tumour outline (BraTS: whole tumour orange, core yellow)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
