"""Evaluation of a model on manifest cases: model vs every rater, rater vs rater, summaries.

Rows (one per case and comparison) go to ``per_case.csv``; the summary (aggregates only, no case
keys, so it may leave a site) goes to ``summary.json``. Comparison names: ``model_vs_<rater>`` and
``<rater_a>_vs_<rater_b>`` (inter-rater, each unordered pair once). Two pooled groups are added
when there are several raters: ``model_vs_raters`` and ``inter_rater`` (per-case mean over the
raters / pairs, for the paper's "AI vs experts" against "expert vs expert"), with a paired
Wilcoxon test of their per-case Dice. Metrics and the empty-mask policy: :mod:`.metrics`. Surface
Dice is the surfel-based NSD (Nikolov et al. 2021); the tolerance it used, ``nsd_tolerance_mm``, is a
column of every row and a key of the summary, so reports can label it.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from torch import nn
from tqdm.auto import tqdm

from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.infer import load_mask, predict
from plgg_fl.engine.metrics import (
    EMPTY_MASK_POLICY,
    METRICS,
    SURFACE_DICE_DEFINITION,
    case_metrics,
    describe,
    paired_wilcoxon,
)

log = logging.getLogger(__name__)

COLUMNS = ["key", "comparison", "a", "b", *METRICS, "hd95_defined", "pred_empty", "ref_empty", "spacing_mm", "nsd_tolerance_mm"]
POOLED_METRICS = ("dice", "surface_dice")


def _case_fields(case: Any) -> tuple[str, Path, dict[str, Path]]:
    if isinstance(case, dict):
        masks = case.get("masks") or ({"ref": case["label"]} if case.get("label") else {})
        return str(case.get("key", case["image"])), Path(case["image"]), {r: Path(p) for r, p in masks.items()}
    return case.key, Path(case.image), dict(case.masks)


def evaluate_cases(
    model: nn.Module,
    cases: Sequence[Any],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    tta: bool | None = None,
    keep_largest: bool | None = None,
    nsd_tolerance_mm: float = 2.0,
    save_predictions: bool = False,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict every case and score it against each of its masks; score rater pairs.

    Returns ``(rows, summary)``. With ``out_dir``: writes ``per_case.csv``, ``summary.json`` and, if
    ``save_predictions``, ``predictions/<key>.nii.gz`` (on the input grid).
    """
    rows: list[dict[str, Any]] = []
    out = Path(out_dir) if out_dir is not None else None
    for case in tqdm(cases, desc="evaluate", disable=not progress, leave=False):
        key, image, masks = _case_fields(case)
        pred = predict(model, image, cfg, tta=tta, keep_largest=keep_largest)
        if out is not None and save_predictions:
            pred.save(out / "predictions" / f"{key}.nii.gz", like=image)
        refs = {}
        for rater, path in masks.items():
            m, _, spacing = load_mask(path)
            if m.shape != pred.mask.shape:
                raise ValueError(f"{key}: mask {path} has shape {m.shape}, image {pred.mask.shape}")
            refs[rater] = m
        spacing = tuple(float(z) for z in nib.load(str(image)).header.get_zooms()[:3])
        for rater, m in refs.items():
            rows.append(_row(key, f"model_vs_{rater}", "model", rater, case_metrics(pred.mask, m, spacing, nsd_tolerance_mm),
                             spacing, nsd_tolerance_mm))
        for ra, rb in itertools.combinations(refs, 2):
            rows.append(_row(key, f"{ra}_vs_{rb}", ra, rb, case_metrics(refs[ra], refs[rb], spacing, nsd_tolerance_mm),
                             spacing, nsd_tolerance_mm))
    summary = summarise(rows, nsd_tolerance_mm=nsd_tolerance_mm)
    summary["n_cases"] = len(cases)
    if out is not None:
        write_rows(rows, out / "per_case.csv")
        write_json(summary, out / "summary.json")
    for name, g in summary["groups"].items():
        d = g["dice"]
        log.info("%s: Dice median %.3f [%.3f-%.3f], mean %.3f (n=%d)", name, d["median"], d["q1"], d["q3"], d["mean"], d["n"])
    return rows, summary


def _row(key: str, comparison: str, a: str, b: str, m: dict[str, Any], spacing, nsd_tolerance_mm: float) -> dict[str, Any]:
    return {"key": key, "comparison": comparison, "a": a, "b": b, **m, "spacing_mm": "x".join(f"{s:g}" for s in spacing),
            "nsd_tolerance_mm": float(nsd_tolerance_mm)}


def summarise(rows: Sequence[dict[str, Any]], nsd_tolerance_mm: float = 2.0) -> dict[str, Any]:
    """Per comparison and metric: median [q1, q3], mean, sd, n, n_undefined (see metrics.describe).

    Adds pooled ``model_vs_raters`` / ``inter_rater`` groups (per-case means of dice and surface_dice)
    and their paired Wilcoxon test when several raters exist. ``nsd_tolerance_mm`` must be the tolerance
    the rows' surface_dice was computed with; it is stored with the summary (with
    ``surface_dice_definition``) for labels.
    """
    by_cmp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cmp[r["comparison"]].append(r)
    groups = {c: {m: describe(r[m] for r in rs) for m in METRICS} for c, rs in by_cmp.items()}
    groups = {c: {**g, "hd95_undefined": sum(not r["hd95_defined"] for r in by_cmp[c])} for c, g in groups.items()}
    summary: dict[str, Any] = {
        "groups": groups,
        "empty_mask_policy": EMPTY_MASK_POLICY,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "surface_dice_definition": SURFACE_DICE_DEFINITION,
    }
    pooled = {name: {m: pooled_values(rows, m, model=name == "model_vs_raters") for m in POOLED_METRICS}
              for name in ("model_vs_raters", "inter_rater")}
    if pooled["inter_rater"]["dice"]:
        for name in pooled:
            summary["groups"][name] = {m: describe(pooled[name][m].values()) for m in POOLED_METRICS}
        w = paired_wilcoxon(pooled["model_vs_raters"]["dice"], pooled["inter_rater"]["dice"])
        summary["wilcoxon_dice_model_vs_raters__inter_rater"] = w
    return summary


def pooled_values(rows: Sequence[dict[str, Any]], metric: str = "dice", model: bool = True) -> dict[str, float]:
    """``{case key: mean of metric}`` over the case's model-vs-rater rows (``model``) or its rater-vs-rater
    rows (not ``model``): the per-case pooling of the paper's "AI vs experts" / "expert vs expert". NaN
    values are left out of a mean; a case whose values are all NaN stays NaN."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if (r["a"] == "model") == model:
            per[r["key"]].append(float(r[metric]))
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan for k, v in per.items()}


def per_case_values(rows: Sequence[dict[str, Any]], comparison: str, metric: str = "dice") -> dict[str, float]:
    """``{case key: value}`` of one comparison's metric (input for :func:`metrics.paired_wilcoxon`)."""
    return {r["key"]: float(r[metric]) for r in rows if r["comparison"] == comparison}


def compare_models(rows_a, rows_b, comparison: str, metric: str = "dice") -> dict[str, Any]:
    """Paired Wilcoxon of two models' per-case ``metric`` for one comparison (e.g. ``model_vs_ref``)."""
    return paired_wilcoxon(per_case_values(rows_a, comparison, metric), per_case_values(rows_b, comparison, metric))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``per_case.csv`` back (numbers as floats, flags as bools, NaN for 'undefined').
    ``nsd_tolerance_mm`` is a float, or None for files written before it was a column."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for m in METRICS:
                row[m] = math.nan if r[m] in ("", "undefined") else float(r[m])
            for flag in ("hd95_defined", "pred_empty", "ref_empty"):
                row[flag] = r[flag] == "True"
            tol = r.get("nsd_tolerance_mm")
            row["nsd_tolerance_mm"] = float(tol) if tol not in (None, "") else None
            out.append(row)
    return out


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """CSV with :data:`COLUMNS`; an undefined (NaN) value is written as ``undefined``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("undefined" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """JSON with NaN written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2), encoding="utf-8")
    return path
