"""The brain-box crop ``predict`` makes before the engine's chain resamples on the uncut image's lattice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd

from plgg_fl.predict.prep import brain_box, crop_affine, lattice_box
from plgg_fl.predict.toy import blob_volume


def _resampled(array, affine, spacing):
    """The engine chain's reorient + resample (bilinear) of ``array``: (values, affine)."""
    chain = Compose([Orientationd(keys="image", axcodes="RAS", labels=None), Spacingd(keys="image", pixdim=spacing, mode="bilinear")])
    out = chain({"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.as_tensor(affine))})["image"]
    return np.asarray(out[0]), np.asarray(out.affine)


def _overlap_difference(full, part, spacing):
    """Largest difference between the cut image's resampled values and the uncut one's at the same points
    (inf when the two lattices do not coincide)."""
    (f, fa), (p, pa) = full, part
    shift = (pa[:3, 3] - fa[:3, 3]) @ np.linalg.inv(fa[:3, :3]).T
    if not np.allclose(shift, np.round(shift), atol=1e-4):
        return np.inf
    o = np.round(shift).astype(int)
    window = f[o[0]:o[0] + p.shape[0], o[1]:o[1] + p.shape[1], o[2]:o[2] + p.shape[2]]
    return float(np.abs(window - p[: window.shape[0], : window.shape[1], : window.shape[2]]).max())


@pytest.mark.parametrize("axcodes,spacing_in", [(("L", "P", "S"), (0.9, 1.1, 3.0)), (("R", "A", "S"), (2.0, 2.0, 3.2)),
                                                 (("P", "I", "R"), (1.0, 1.25, 1.5))])
def test_cut_image_resamples_to_the_uncut_values(axcodes, spacing_in):
    img, _, aff = blob_volume((60, 52, 40), spacing_in, seed=3, tumour_radius_mm=9, axcodes=axcodes,
                              brain_semi_mm=tuple(0.3 * n * s for n, s in zip((60, 52, 40), spacing_in)))
    target = (2.0, 2.0, 2.0)
    brain = img != 0
    naive = brain_box(brain, aff, 8.0)
    aligned = lattice_box(naive, img.shape, aff, target)
    assert all(a.start <= b.start and a.stop >= b.stop for a, b in zip(aligned, naive))  # only ever grows
    assert any((a.start, a.stop) != (0, n) for a, n in zip(aligned, img.shape))  # and still cuts something
    full = _resampled(img, aff, target)
    for box, close in ((aligned, True), (naive, False)):
        diff = _overlap_difference(full, _resampled(img[box], crop_affine(aff, box), target), target)
        if close:
            assert diff < 1e-4, diff
        elif naive != aligned:  # the unaligned cut samples other points (the bug this guards against)
            assert diff > 1e-3, diff


def test_no_resampling_keeps_the_box_and_an_unalignable_axis_is_not_cut():
    box = (slice(3, 20), slice(4, 30), slice(5, 25))
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    assert lattice_box(box, (30, 40, 30), aff, None) == box
    odd = np.diag([0.7071, 1.0, 1.0, 1.0])  # 0.7071 mm never meets a 2 mm lattice within 64 voxels
    got = lattice_box(box, (30, 40, 30), odd, (2.0, 2.0, 2.0))
    assert got[0] == slice(0, 30) and got[1] == slice(4, 30) and got[2] == slice(4, 25)
    assert nib.aff2axcodes(odd) == ("R", "A", "S")
