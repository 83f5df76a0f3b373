"""Engine metrics and evaluation on hand-built masks with known answers."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from plgg_fl.engine import TrainConfig, evaluate_cases
from plgg_fl.engine.evaluate import compare_models, read_rows
from plgg_fl.engine.metrics import case_metrics, describe, format_summary, paired_wilcoxon
from plgg_fl.engine.toydata import write_toy_case

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SPACING = (1.0, 0.5, 3.0)  # mm, anisotropic


def cube(shape=(20, 30, 12), lo=(4, 6, 2), side=(8, 12, 4)):
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(a, a + s) for a, s in zip(lo, side))] = 1
    return m


def test_shifted_cube_known_dice_hd95_and_volume():
    # 8 x 12 x 4 voxel box shifted by 1 voxel along z (3 mm): overlap 3/4 of each box.
    ref = cube()
    pred = cube(lo=(4, 6, 3))
    m = case_metrics(pred, ref, SPACING)
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95_mm"] == pytest.approx(3.0) and m["hd95_defined"]
    assert m["sensitivity"] == pytest.approx(0.75) and m["precision"] == pytest.approx(0.75)
    voxel_ml = 1.0 * 0.5 * 3.0 / 1000
    assert m["vol_ref_ml"] == pytest.approx(8 * 12 * 4 * voxel_ml)
    assert m["vol_diff_ml"] == 0.0
    assert m["surface_dice"] < 1.0  # default tolerance 2 mm < the 3 mm shift
    assert case_metrics(pred, ref, SPACING, nsd_tolerance_mm=3.0)["surface_dice"] == pytest.approx(1.0)


def test_shift_along_fine_axis_is_measured_in_mm():
    ref = cube()
    pred = cube(lo=(4, 8, 2))  # 2 voxels along y = 1.0 mm
    m = case_metrics(pred, ref, SPACING, nsd_tolerance_mm=1.0)
    assert m["dice"] == pytest.approx(10 / 12)
    assert m["hd95_mm"] == pytest.approx(1.0)
    assert m["surface_dice"] == pytest.approx(1.0)
    assert case_metrics(pred, ref, SPACING, nsd_tolerance_mm=0.25)["surface_dice"] < 1.0


def _box_surfel_areas(n, s):
    """Surfel areas (mm^2) of an axis-aligned box of n = (nx, ny, nz) voxels with spacing s, by the
    marching-cubes surfels of Nikolov et al. 2021 (one surfel per voxel-corner vertex on the surface):
    face-interior vertex = one voxel face; edge vertex = a chamfer strip of half-diagonals; corner
    vertex = the triangle through the three half-edges. Returns (face interiors {axis pair: area},
    edges {axis: area of one whole edge}, corner)."""
    (nx, ny, nz), (sx, sy, sz) = n, s
    faces = {"xy": (nx - 1) * (ny - 1) * sx * sy, "xz": (nx - 1) * (nz - 1) * sx * sz, "yz": (ny - 1) * (nz - 1) * sy * sz}
    edges = {"x": (nx - 1) * sx * 0.5 * math.hypot(sy, sz), "y": (ny - 1) * sy * 0.5 * math.hypot(sx, sz),
             "z": (nz - 1) * sz * 0.5 * math.hypot(sx, sy)}
    corner = math.sqrt((sy * sz) ** 2 + (sx * sz) ** 2 + (sx * sy) ** 2) / 8
    return faces, edges, corner


def test_surface_dice_is_surfel_based_on_anisotropic_grid():
    """Nikolov et al. 2021 NSD (area-weighted surfels), worked out by hand for a 10 x 8 x 4 voxel box at
    0.5 x 0.5 x 3 mm and the same box one slice (3 mm) higher. The edge-voxel count (MONAI's default,
    use_subvoxels=False) gives 0.43 at 0.4 mm and 0.64 at 2 mm instead."""
    s, n = (0.5, 0.5, 3.0), (10, 8, 4)
    ref = cube(shape=(16, 14, 10), lo=(3, 3, 2), side=n)
    pred = cube(shape=(16, 14, 10), lo=(3, 3, 3), side=n)
    faces, edges, corner = _box_surfel_areas(n, s)
    total = 2 * sum(faces.values()) + 4 * sum(edges.values()) + 8 * corner  # one box's surface
    # The far cap (ref: its bottom face; pred: its top face), with its rim (2 x-edges, 2 y-edges, 4
    # corners), lies 3 mm from the other box's surface. Both boxes' side faces (and their vertical edges)
    # coincide over the overlapping slices, and the near cap's rim lies on the other box's side faces: 0 mm.
    far_cap = faces["xy"] + 2 * edges["x"] + 2 * edges["y"] + 4 * corner
    # Tolerance 0.4 mm (< the 0.5 mm in-plane step): only vertices shared by both surfaces count. Not
    # counted besides the far cap: the interior of the near cap (>= 0.5 mm in-plane from the other's side
    # faces, 3 mm from its cap).
    want_04 = (total - far_cap - faces["xy"]) / total
    assert case_metrics(pred, ref, s, nsd_tolerance_mm=0.4)["surface_dice"] == pytest.approx(want_04, abs=1e-5)
    # Tolerance 2 mm (default): every near-cap vertex is <= 4 in-plane steps (2 mm) from the rim (the box is
    # 8 voxels wide in y), so only the far caps miss.
    want_2 = (total - far_cap) / total
    assert case_metrics(pred, ref, s)["surface_dice"] == pytest.approx(want_2, abs=1e-5)
    assert (round(want_04, 3), round(want_2, 3)) == (0.762, 0.828)
    assert case_metrics(pred, ref, s, nsd_tolerance_mm=3.0)["surface_dice"] == pytest.approx(1.0)


def test_nested_boxes_volume_difference_and_precision():
    ref = cube()
    pred = cube(lo=(4, 6, 2), side=(8, 12, 2))  # half of the reference
    m = case_metrics(pred, ref, SPACING)
    assert m["dice"] == pytest.approx(2 * 0.5 / 1.5)
    assert m["sensitivity"] == pytest.approx(0.5) and m["precision"] == pytest.approx(1.0)
    assert m["vol_diff_ml"] == pytest.approx(-8 * 12 * 2 * 1.5 / 1000)


def test_empty_mask_policy():
    ref, empty = cube(), np.zeros((20, 30, 12), np.uint8)
    both = case_metrics(empty, empty, SPACING)
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["hd95_defined"] and both["surface_dice"] == 1.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    no_pred = case_metrics(empty, ref, SPACING)
    assert no_pred["dice"] == 0.0 and math.isnan(no_pred["hd95_mm"]) and not no_pred["hd95_defined"]
    assert no_pred["sensitivity"] == 0.0 and math.isnan(no_pred["precision"]) and no_pred["pred_empty"]
    no_ref = case_metrics(ref, empty, SPACING)
    assert no_ref["dice"] == 0.0 and not no_ref["hd95_defined"] and no_ref["surface_dice"] == 0.0
    assert no_ref["precision"] == 0.0 and math.isnan(no_ref["sensitivity"]) and no_ref["ref_empty"]
    assert no_ref["vol_diff_ml"] == pytest.approx(no_ref["vol_pred_ml"])


def test_describe_counts_undefined_and_never_averages_nan():
    d = describe([1.0, 2.0, 3.0, 4.0, math.nan])
    assert d["n"] == 4 and d["n_undefined"] == 1
    assert d["median"] == 2.5 and d["mean"] == 2.5 and d["q1"] == 1.75 and d["q3"] == 3.25
    assert d["sd"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert "undefined=1" in format_summary(d)


def test_paired_wilcoxon():
    a = {f"c{i}": 0.8 + 0.01 * i for i in range(10)}
    b = {k: v - 0.1 - 0.001 * i for i, (k, v) in enumerate(a.items())}
    w = paired_wilcoxon(a, b)
    assert w["n"] == 10 and w["p_value"] < 0.01 and w["median_difference"] > 0
    assert math.isnan(paired_wilcoxon(a, a)["p_value"])


class _Oracle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([1.5 - x, x - 1.5], dim=1) * 10


def test_evaluate_cases_multi_rater_writes_csv_and_json(tmp_path):
    cases = []
    for i in range(3):
        c = write_toy_case(tmp_path, f"e{i}", seed=10 + i, shape=(32, 32, 24), spacing_mm=(1.5, 1.5, 2.0))
        lab = nib.load(c["label"])
        eroded = np.asarray(lab.dataobj).copy()
        eroded[:, :, : eroded.shape[2] // 2] = 0  # a second rater who drew half the tumour
        p2 = tmp_path / f"e{i}_r2.nii.gz"
        nib.save(nib.Nifti1Image(eroded, lab.affine), str(p2))
        cases.append({"key": c["key"], "image": c["image"], "masks": {"r1": c["label"], "r2": str(p2)}})
    cfg = TrainConfig.for_preset("tiny", spacing_mm=(1.5, 1.5, 1.5))
    rows, summary = evaluate_cases(_Oracle(), cases, cfg, out_dir=tmp_path / "ev", save_predictions=True, progress=False)
    assert {r["comparison"] for r in rows} == {"model_vs_r1", "model_vs_r2", "r1_vs_r2"}
    assert len(rows) == 9
    g = summary["groups"]
    assert g["model_vs_r1"]["dice"]["median"] > 0.85
    assert g["r1_vs_r2"]["dice"]["n"] == 3 and g["inter_rater"]["dice"]["n"] == 3
    assert "wilcoxon_dice_model_vs_raters__inter_rater" in summary
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert saved["groups"]["model_vs_r1"]["dice"]["n"] == 3
    assert "e0" not in json.dumps(saved)  # no case keys in what may leave the site
    back = read_rows(tmp_path / "ev" / "per_case.csv")
    assert [r["dice"] for r in back] == pytest.approx([r["dice"] for r in rows])
    assert (tmp_path / "ev" / "predictions" / "e0.nii.gz").is_file()
    assert compare_models(rows, rows, "model_vs_r1")["n"] == 3
