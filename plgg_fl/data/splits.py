"""Train / val / test splits: reproducible from a seed, stratified by tumour volume, or read from a file.

:func:`make_splits` assigns labelled cases so that every tumour-volume quantile bin is spread over
the splits in the requested proportions (small and large tumours in every split). Cases without a
label (no reference mask) cannot be trained on and go to ``test``. :func:`load_split_file` reads an
explicit list (YAML/JSON ``{train: [...], val: [...], test: [...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import yaml

from plgg_fl.data.manifest import SPLITS

__all__ = ["tumour_volume_ml", "volume_bins", "make_splits", "load_split_file"]


def tumour_volume_ml(mask_path: str | Path) -> float:
    """Whole-tumour volume (label > 0) of a mask file in millilitres (voxel count x voxel volume in mm^3 / 1000)."""
    import nibabel as nib

    img = nib.load(str(mask_path))
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    return float(np.count_nonzero(np.asanyarray(img.dataobj) > 0)) * voxel_mm3 / 1000.0


def volume_bins(volumes_ml: Mapping[str, float], n_bins: int = 4) -> dict[str, int]:
    """Quantile bin (0 .. n_bins-1) of each case's tumour volume (ml); fewer bins when there are few cases."""
    keys = list(volumes_ml)
    if not keys:
        return {}
    n_bins = max(1, min(n_bins, len(keys) // 3 or 1))
    vols = np.array([volumes_ml[k] for k in keys], dtype=float)
    edges = np.quantile(vols, np.linspace(0, 1, n_bins + 1)[1:-1])
    return {k: int(b) for k, b in zip(keys, np.searchsorted(edges, vols, side="right"))}


def _target_counts(n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    n_test = int(round(n * test_frac))
    n_val = min(int(round(n * val_frac)), n - n_test)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def make_splits(
    keys: Iterable[str],
    volumes_ml: Mapping[str, float | None] | None = None,
    *,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.0,
    n_bins: int = 4,
) -> dict[str, str]:
    """Assign each case key to ``train``/``val``/``test``; the same inputs and seed give the same split.

    ``volumes_ml`` maps a key to its tumour volume in ml, or ``None`` when the case has no label
    (such cases go to ``test``). Labelled cases are shuffled within their volume quantile bin, the
    bins are laid end to end, and split labels are dealt along that order by largest deficit, so
    the totals are exact (``round(n * frac)``) and each bin gets its proportional share (+-1).
    Without volumes every key counts as labelled and one bin is used.
    """
    if not (0 <= val_frac <= 1 and 0 <= test_frac <= 1 and val_frac + test_frac <= 1):
        raise ValueError(f"split fractions must be in [0, 1] and sum to <= 1, got val={val_frac} test={test_frac}")
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("case keys must be unique to make a split")
    if volumes_ml is None:
        volumes_ml = {k: 0.0 for k in keys}
        n_bins = 1
    out = {k: "test" for k in keys if volumes_ml.get(k) is None}
    labelled = {k: float(volumes_ml[k]) for k in sorted(keys) if volumes_ml.get(k) is not None}
    bins = volume_bins(labelled, n_bins)
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for b in sorted(set(bins.values())):
        members = [k for k in labelled if bins[k] == b]
        order.extend(members[i] for i in rng.permutation(len(members)))
    target = _target_counts(len(order), val_frac, test_frac)
    assigned = dict.fromkeys(SPLITS, 0)
    n = len(order)
    for i, key in enumerate(order):
        deficit = {s: target[s] * (i + 1) / n - assigned[s] for s in SPLITS}
        split = max(SPLITS, key=lambda s: (deficit[s], -SPLITS.index(s)))
        assigned[split] += 1
        out[key] = split
    return {k: out[k] for k in keys}


def load_split_file(path: str | Path) -> dict[str, str]:
    """Read an explicit split list (YAML or JSON ``{train: [keys], val: [keys], test: [keys]}``) -> key -> split.

    Raises ``ValueError`` for an unknown split name, a non-list entry, or a key listed twice.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: split file must map split name -> list of case keys")
    out: dict[str, str] = {}
    for split, keys in data.items():
        if split not in SPLITS:
            raise ValueError(f"{path}: unknown split {split!r}; expected {', '.join(SPLITS)}")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{path}: {split!r} must be a list of case keys")
        for k in keys:
            if k in out:
                raise ValueError(f"{path}: case {k!r} is listed in both {out[k]!r} and {split!r}")
            out[k] = split
    return out
