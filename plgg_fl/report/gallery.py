"""Failure gallery: the worst cases of the best method, image + reference + prediction at the tumour centre.

The evaluation job does not keep predicted masks (the client calls ``evaluate_cases`` without
``save_predictions``), so the gallery RE-PREDICTS the chosen cases with the method's checkpoint from
``runs/<name>/checkpoints`` and the evaluation's settings (the config's stage-2 ``train`` block), using
the engine's :func:`plgg_fl.engine.predict`. That reads the site's images, so it is a SITE-SIDE step: in
the simulator all sites are on this machine; in a real federation each site renders its own gallery.
Each panel states the re-predicted Dice next to the Dice in ``per_case.csv`` so a mismatch is visible.

"Best method": highest median per-case Dice over all test cases of all sites (ties: higher mean).
"Worst cases": that method's lowest per-case Dice (mean over references), across sites.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plgg_fl.report.overlay import centre_of, draw, load_ras
from plgg_fl.report.tables import model_values

log = logging.getLogger(__name__)


@dataclass
class GalleryItem:
    site: str
    key: str
    method: str
    dice_csv: float  # from per_case.csv (mean over references)
    dice_now: float  # re-predicted vs the same reference(s)
    reference: str  # the reference drawn
    image: Path | None  # PNG
    note: str = ""


def best_method(per_case: dict, methods: list[str]) -> str | None:
    """The method with the highest median Dice over every test case of every site (ties: mean)."""
    scores = {}
    for m in methods:
        vals = [v for (s, mm), rows in per_case.items() if mm == m for v in model_values(rows, "dice").values()]
        if vals:
            scores[m] = (float(np.median(vals)), float(np.mean(vals)))
    return max(scores, key=scores.get) if scores else None


def worst_cases(per_case: dict, method: str, k: int) -> list[tuple[str, str, float]]:
    """``[(site, key, dice)]``: ``method``'s ``k`` lowest-Dice cases over all sites (ties by site, key)."""
    allv = [(d, s, key) for (s, m), rows in per_case.items() if m == method for key, d in model_values(rows, "dice").items()]
    return [(s, key, d) for d, s, key in sorted(allv)[:k]]


def render(run, out_dir: Path, k: int = 3, method: str | None = None) -> tuple[str | None, list[GalleryItem]]:
    """Re-predict and draw ``k`` worst cases of ``method`` (default: the best). Returns (method, items);
    items whose site data or checkpoint cannot be found carry a ``note`` and no image."""
    from plgg_fl.data.manifest import load_manifest
    from plgg_fl.engine import predict
    from plgg_fl.engine.infer import load_mask
    from plgg_fl.engine.metrics import dice

    method = method or best_method(run.per_case, run.methods)
    if method is None:
        return None, []
    ckpt = run.checkpoint(method)
    model, cfg = run.model(method, ckpt) or (None, None)  # the model's own config, as it was trained and evaluated
    items: list[GalleryItem] = []
    manifests: dict[str, dict] = {}
    for site, key, d_csv in worst_cases(run.per_case, method, k):
        item = GalleryItem(site, key, method, d_csv, float("nan"), "", None)
        items.append(item)
        if model is None:
            item.note = f"checkpoint for {method!r} not found ({ckpt})"
            continue
        mpath = run.manifest(site)
        if mpath is None:
            item.note = f"{site}'s manifest not found (cohort {run.cohort_dir()}); render the gallery at the site"
            continue
        if site not in manifests:
            manifests[site] = {c.key: c for c in load_manifest(mpath).cases}
        case = manifests[site].get(key)
        if case is None:
            item.note = f"case {key} not in {mpath}"
            continue
        pred = predict(model, case.image, cfg)
        vol = load_ras(case.image, {**case.masks, "__pred__": pred.mask})
        raters = list(case.masks)
        item.dice_now = float(np.mean([dice(pred.mask, load_mask(case.masks[r])[0]) for r in raters])) if raters else float("nan")
        item.reference = raters[0] if raters else ""
        styles = {raters[0]: {"color": "#00e000", "label": f"reference ({raters[0]})"}} if raters else {}
        styles["__pred__"] = {"color": "#ff3030", "label": f"prediction ({method})"}
        title = f"{site} · {key} · Dice {d_csv:.3f} (evaluation) / {item.dice_now:.3f} (re-predicted)"
        item.image = draw(vol, centre_of(vol, [*raters[:1], "__pred__"]), styles, out_dir / f"gallery_{site}_{key}.png", title)
        if abs(item.dice_now - d_csv) > 1e-3:
            item.note = "re-predicted Dice differs from the evaluation's: settings or checkpoint differ"
            log.warning("%s %s: %s", site, key, item.note)
    return method, items
