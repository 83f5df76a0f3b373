"""Per-case segmentation metrics (MONAI implementations) with an explicit empty-mask policy.

Inputs are binary masks (numpy or torch, shape ``[X, Y, Z]``, foreground = value > 0) on the same
voxel grid, and the voxel spacing in mm. Surface metrics use MONAI's distance transforms with that
spacing, so HD95 and surface Dice are in mm on anisotropic grids.

Surface Dice is the normalised surface Dice (NSD) of Nikolov et al. 2021 (arXiv 1809.04430, the
definition the field reports): surfel-based, i.e. each mask's surface is cut into marching-cubes
surface elements at the voxel corners, each weighted by its area in mm^2 (MONAI
``compute_surface_dice(..., use_subvoxels=True)``, DeepMind's ``surface-distance``), and NSD is the
area of both surfaces within the tolerance of the other, over the total area. MONAI's default
(``use_subvoxels=False``) counts boundary voxels instead, which on 0.5 x 0.5 x 3 mm grids differs
by up to ~0.2 and is not comparable with published values. The tolerance (``nsd_tolerance_mm``) is
written into every summary and per-case row; report labels are taken from there.

EMPTY-MASK POLICY (``EMPTY_MASK_POLICY`` below is the same text, written into every summary):

=====================  ================  ===========================  ==========================
metric                 both empty        reference empty only         prediction empty only
=====================  ================  ===========================  ==========================
dice                   1.0               0.0                          0.0
hd95_mm                0.0               NaN, ``hd95_defined=False``  NaN, ``hd95_defined=False``
surface_dice           1.0               0.0                          0.0
sensitivity            NaN (undefined)   NaN (undefined)              0.0
precision              NaN (undefined)   0.0                          NaN (undefined)
volume ml / diff ml    defined (0 ml)    defined                      defined
=====================  ================  ===========================  ==========================

Summaries never average NaN: each metric reports ``n`` (cases with a defined value) and
``n_undefined`` next to its statistics, so an undefined HD95 is visible, not silently dropped.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

EMPTY_MASK_POLICY = (
    "dice: both empty 1, one empty 0. hd95_mm: both empty 0; exactly one empty undefined (NaN, "
    "hd95_defined=False). surface_dice: both empty 1, one empty 0. sensitivity undefined (NaN) when the "
    "reference is empty; precision undefined (NaN) when the prediction is empty. Summaries use defined "
    "values only and report n and n_undefined per metric."
)

SURFACE_DICE_DEFINITION = (
    "normalised surface Dice, surfel-based (Nikolov et al. 2021): marching-cubes surface elements weighted "
    "by area, MONAI compute_surface_dice(use_subvoxels=True), tolerance nsd_tolerance_mm"
)

METRICS = ("dice", "hd95_mm", "surface_dice", "sensitivity", "precision", "vol_pred_ml", "vol_ref_ml", "vol_diff_ml")


def _t(mask: Any) -> torch.Tensor:
    """Binary mask -> float tensor [1, 1, X, Y, Z]."""
    m = torch.as_tensor(np.asarray(mask) > 0 if not isinstance(mask, torch.Tensor) else mask > 0)
    if m.dim() != 3:
        raise ValueError(f"expected a 3D mask, got shape {tuple(m.shape)}")
    return m.float()[None, None]


def case_metrics(pred: Any, ref: Any, spacing_mm: Sequence[float], nsd_tolerance_mm: float = 2.0) -> dict[str, Any]:
    """Metrics of ``pred`` against ``ref`` (same grid). Returns a flat dict of floats/bools/ints.

    Keys: dice, hd95_mm, hd95_defined, surface_dice (normalised surface Dice at ``nsd_tolerance_mm``,
    surfel-based as in Nikolov et al. 2021: MONAI ``use_subvoxels=True``; see the module docstring),
    sensitivity, precision, vol_pred_ml, vol_ref_ml, vol_diff_ml (pred - ref), pred_empty, ref_empty.
    """
    p, r = _t(pred), _t(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction {tuple(p.shape[2:])} and reference {tuple(r.shape[2:])} differ in shape")
    spacing = tuple(float(s) for s in spacing_mm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_p, n_r = int(p.sum()), int(r.sum())
    tp = int((p * r).sum())
    pe, re_ = n_p == 0, n_r == 0
    out: dict[str, Any] = {"pred_empty": pe, "ref_empty": re_}
    if pe and re_:
        out.update(dice=1.0, hd95_mm=0.0, hd95_defined=True, surface_dice=1.0)
    elif pe or re_:
        out.update(dice=0.0, hd95_mm=math.nan, hd95_defined=False, surface_dice=0.0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["dice"] = float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])
            out["hd95_mm"] = float(
                compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)[0, 0]
            )
            out["hd95_defined"] = True
            out["surface_dice"] = float(
                compute_surface_dice(
                    p, r, class_thresholds=[nsd_tolerance_mm], include_background=True, spacing=spacing, use_subvoxels=True
                )[0, 0]
            )
    out["sensitivity"] = tp / n_r if n_r else math.nan
    out["precision"] = tp / n_p if n_p else math.nan
    out["vol_pred_ml"] = n_p * voxel_ml
    out["vol_ref_ml"] = n_r * voxel_ml
    out["vol_diff_ml"] = (n_p - n_r) * voxel_ml
    return out


def dice(pred: Any, ref: Any) -> float:
    """Dice with the policy above (both empty -> 1)."""
    p, r = _t(pred), _t(ref)
    if not p.any() and not r.any():
        return 1.0
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def finite_number(value) -> bool:
    """A finite real ``int``/``float`` (bools excluded): what may go into a metrics table or leave a site
    as a metric."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """median, q1, q3, mean, sd (ddof=1) over the defined (non-NaN) values; n and n_undefined."""
    v = np.asarray([float(x) for x in values], dtype=float)
    ok = v[~np.isnan(v)]
    d: dict[str, float | int] = {"n": int(ok.size), "n_undefined": int(v.size - ok.size)}
    if ok.size:
        q1, med, q3 = np.percentile(ok, [25, 50, 75])
        d.update(median=float(med), q1=float(q1), q3=float(q3), mean=float(ok.mean()),
                 sd=float(ok.std(ddof=1)) if ok.size > 1 else math.nan)
    else:
        d.update(median=math.nan, q1=math.nan, q3=math.nan, mean=math.nan, sd=math.nan)
    return d


def format_summary(d: Mapping[str, float | int], digits: int = 3) -> str:
    """``median [q1-q3]; mean +- sd (n=.., undefined=..)``"""
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(d['median'])} [{f.format(d['q1'])}-{f.format(d['q3'])}]; "
        f"{f.format(d['mean'])} +- {f.format(d['sd'])} (n={d['n']}, undefined={d['n_undefined']})"
    )


def paired_wilcoxon(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any]:
    """Paired Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided) of a[k] vs b[k] over the
    case keys both define (non-NaN). Returns n, statistic, p_value, median_difference (a - b).
    Fewer than 1 non-zero difference -> statistic/p_value NaN with ``note``."""
    from scipy.stats import wilcoxon

    keys = [k for k in a if k in b and not math.isnan(a[k]) and not math.isnan(b[k])]
    x = np.array([a[k] for k in keys], dtype=float)
    y = np.array([b[k] for k in keys], dtype=float)
    res: dict[str, Any] = {"n": len(keys), "median_difference": float(np.median(x - y)) if keys else math.nan}
    if not keys or np.all(x == y):
        res.update(statistic=math.nan, p_value=math.nan, note="no non-zero paired differences")
        return res
    w = wilcoxon(x, y, alternative="two-sided")
    res.update(statistic=float(w.statistic), p_value=float(w.pvalue))
    return res
