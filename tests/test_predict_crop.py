"""The brain-box crop ``predict`` makes before the engine's chain resamples on the uncut image's lattice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd

from plgg_fl.engine.infer import crop_affine
from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.prep import brain_box, lattice_box


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


@pytest.mark.parametrize("axcodes,spacing_in,shape", [(("R", "A", "S"), (1.0, 1.0, 1.0), (64, 72, 56)),
                                                      (("L", "I", "A"), (0.9, 1.1, 3.0), (60, 52, 20)),
                                                      (("P", "S", "L"), (1.2, 0.8, 2.0), (50, 76, 30))])
def test_hot_box_inverse_gives_the_full_inversions_mask(axcodes, spacing_in, shape):
    """The inverse resampled only around the coarse voxels > 0.5 gives the mask of MONAI's full Invertd."""
    from monai.transforms import Invertd

    from plgg_fl.engine.config import TrainConfig
    from plgg_fl.engine.infer import _load, invert_hot_box
    from plgg_fl.engine.transforms import IMAGE, preprocess

    img, seg, aff = blob_volume(shape, spacing_in, seed=5, tumour_radius_mm=9, axcodes=axcodes)
    cfg = TrainConfig.for_preset("tiny", spacing_mm=(2.0, 2.0, 2.0))
    chain = preprocess(cfg, with_label=False, load=False)
    data = chain({IMAGE: _load(nib.Nifti1Image(img, aff))})
    # a smooth 'probability' on the coarse grid: high on the bright tumour of the z-scored image
    coarse = torch.sigmoid((torch.as_tensor(np.asarray(data[IMAGE][0])) - 1.5) * 4.0)[None]
    fg = MetaTensor(coarse.float(), meta=dict(data[IMAGE].meta))
    full = Invertd(keys="pred", transform=chain, orig_keys=IMAGE, nearest_interp=False)({**data, "pred": fg})["pred"][0]
    fast = invert_hot_box(fg, aff, img.shape)
    assert fast is not None and fast.shape == img.shape
    assert (np.asarray(full) > 0.5).sum() > 50
    np.testing.assert_array_equal(np.asarray(full) > 0.5, fast > 0.5)
    empty = MetaTensor(torch.zeros_like(coarse), meta=dict(data[IMAGE].meta))
    assert not invert_hot_box(empty, aff, img.shape).any()
    edge = coarse.clone()
    edge[0, 0] = 0.9  # a voxel > 0.5 on the grid's edge: padding would decide, so the full inversion is asked for
    assert invert_hot_box(MetaTensor(edge, meta=dict(data[IMAGE].meta)), aff, img.shape) is None
