"""Blinded review packet (the paper's acceptability rating and Turing test), made AT THE SITE.

For N test cases, every mask of the case - the model's and each expert's - is drawn the same way (one
colour, contour + translucent fill, axial/coronal/sagittal through the centre of the UNION of that
case's expert masks, so the slice position does not depend on whose mask is shown). All items of all cases
are shuffled together (seeded) and named ``R001``, ``R002``, ... in that order; a case gets a neutral
number ``C01``.... Nothing in the packet (file names, titles, sheet, PNG metadata) names the source.

Packet folder::

    images/R001.png ...         one overlay per item
    rating_sheet.csv            item, case, image, score_1_10, acceptable_yes_no, made_by_ai_yes_no, comments
    README.txt                  instructions for raters

The key (item -> case key, source, AI or expert) is written to a SEPARATE file, by default next to the
packet folder (``<packet>_KEY.csv``), never inside it. Keep it away from raters.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Callable

import numpy as np

from plgg_fl.report.overlay import Volume, draw, load_ras

SHEET_COLUMNS = ["item", "case", "image", "score_1_10", "acceptable_yes_no", "made_by_ai_yes_no", "comments"]
KEY_COLUMNS = ["item", "case", "case_key", "source", "source_type"]
AI_SOURCE = "model"
STYLE = {"color": "#ffd400", "label": ""}
README = """Segmentation review packet

Each image shows ONE tumour segmentation (yellow) on a T2 scan: axial, coronal and sagittal slices.
Images of the same case share a case number (C01, ...). Items are in random order.
For every item, fill one row of rating_sheet.csv:
  score_1_10          overall quality, 1 (unusable) to 10 (perfect)
  acceptable_yes_no   yes if you would accept it for clinical use (e.g. volumetrics) without edits
  made_by_ai_yes_no   yes if you think a computer made it, no if you think a human expert did
  comments            optional
Put your name or rater code in the file name (rating_sheet_<you>.csv) and return the sheet only.
"""


def default_key_path(packet_dir: Path) -> Path:
    packet_dir = Path(packet_dir)
    return packet_dir.parent / f"{packet_dir.name}_KEY.csv"


def make_packet(cases: list, predict_mask: Callable[[object], np.ndarray], out_dir: str | Path, n: int = 10,
                seed: int = 0, key_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the packet for ``n`` cases drawn (seeded) from ``cases`` (manifest ``Case``s with >= 1 mask).
    ``predict_mask(case)`` returns the model's mask on the case's image grid. Returns (sheet, key) paths."""
    out = Path(out_dir)
    key_path = Path(key_path) if key_path else default_key_path(out)
    if key_path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the key {key_path} must not lie inside the packet folder {out}")
    rng = random.Random(seed)
    usable = [c for c in cases if c.masks]
    chosen = sorted(rng.sample(usable, min(n, len(usable))), key=lambda c: c.key)
    case_ids = {c.key: f"C{i + 1:02d}" for i, c in enumerate(rng.sample(chosen, len(chosen)))}
    items: list[tuple] = []  # (case, source, source_type, volume)
    for case in chosen:
        vol = load_ras(case.image, {**case.masks, AI_SOURCE: predict_mask(case)})
        items += [(case, src, "AI" if src == AI_SOURCE else "expert", vol) for src in [AI_SOURCE, *case.masks]]
    rng.shuffle(items)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sheet, key = [], []
    centres: dict[str, tuple] = {}
    for i, (case, src, kind, vol) in enumerate(items, start=1):
        item = f"R{i:03d}"
        if case.key not in centres:
            refs = [m for name, m in vol.masks.items() if name != AI_SOURCE]  # same point for every item of the case
            union = np.any(np.stack(refs), axis=0) if refs and np.any(refs) else vol.masks[AI_SOURCE]
            centres[case.key] = tuple(int(round(c)) for c in np.argwhere(union).mean(axis=0)) if union.any() \
                else tuple(s // 2 for s in vol.image.shape)
        shown = Volume(vol.image, {"mask": vol.masks[src]}, vol.spacing)
        draw(shown, centres[case.key], {"mask": STYLE}, out / "images" / f"{item}.png", f"{item} · case {case_ids[case.key]}", fill=True)
        sheet.append({"item": item, "case": case_ids[case.key], "image": f"images/{item}.png"})
        key.append({"item": item, "case": case_ids[case.key], "case_key": case.key, "source": src, "source_type": kind})
    with (out / "rating_sheet.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
        w.writeheader()
        w.writerows(sheet)
    (out / "README.txt").write_text(README, encoding="utf-8")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    with key_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=KEY_COLUMNS)
        w.writeheader()
        w.writerows(key)
    return out / "rating_sheet.csv", key_path
