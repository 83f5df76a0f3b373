"""Importers: write a site manifest from data as hospitals and challenges hold it.

* :func:`import_brats`  - a BraTS 2021 folder (``BraTS2021_00000/BraTS2021_00000_t2.nii.gz`` + ``_seg``),
* :func:`import_nnunet` - an nnU-Net raw dataset (``imagesTr/``, ``labelsTr/``, ``dataset.json``, ``imagesTs/``),
* :func:`import_pairs`  - a plain folder of image/mask pairs matched by naming patterns.

Each importer only *reads* the source tree (file names, NIfTI headers, masks for tumour volumes)
and writes one manifest file; source files are never modified. Cases without a reference mask go
to ``test`` (inference only); skipped files are logged on the ``plgg_fl.data`` logger. Splits come
from the source where it has them (nnU-Net ``imagesTs``), from an explicit ``splits`` file, or are
made from ``seed`` stratified by tumour volume (:mod:`plgg_fl.data.splits`). ``spacing_mm`` is the
most common voxel spacing (mm) among the images.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
from tqdm.auto import tqdm

from plgg_fl.data.manifest import BINARY_LABEL_VALUES, BRATS_LABEL_VALUES, Case, Manifest, write_manifest
from plgg_fl.data.splits import load_split_file, make_splits, tumour_volume_ml

__all__ = ["import_brats", "import_nnunet", "import_pairs", "DataImportError", "is_t2"]

log = logging.getLogger("plgg_fl.data")


class DataImportError(ValueError):
    """The source cannot be imported as asked (layout, dataset.json, patterns or split file)."""


@dataclass
class _Entry:
    key: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)
    split: str | None = None  # fixed by the source (e.g. nnU-Net imagesTs -> test)


def _assign_splits(entries, *, seed, val_frac, test_frac, splits_file, progress) -> list[_Entry]:
    """Give every entry a split; returns the entries kept (a split file may leave some out)."""
    if splits_file is not None:
        listed = load_split_file(splits_file)
        known = {e.key for e in entries}
        missing = sorted(set(listed) - known)
        if missing:
            raise DataImportError(f"{splits_file}: {len(missing)} listed case(s) not found in the source: {', '.join(missing[:10])}")
        kept = []
        for e in entries:
            if e.key not in listed:
                log.warning("case %s is not in split file %s: left out of the manifest", e.key, splits_file)
                continue
            e.split = listed[e.key]
            if e.split in ("train", "val") and not e.masks:
                raise DataImportError(f"{splits_file}: case {e.key} is listed in {e.split} but has no reference mask")
            kept.append(e)
        return kept
    free = [e for e in entries if e.split is None]
    volumes: dict[str, float | None] = {}
    for e in tqdm(free, desc="tumour volumes", unit="case", disable=not progress or len(free) < 20):
        if not e.masks:
            volumes[e.key] = None
            continue
        try:
            volumes[e.key] = tumour_volume_ml(next(iter(e.masks.values())))
        except Exception as exc:  # a bad mask is reported by `data check`; here it only loses its stratum
            log.warning("case %s: cannot read mask for its tumour volume (%s); stratified as 0 ml", e.key, exc)
            volumes[e.key] = 0.0
    assigned = make_splits(volumes, volumes, seed=seed, val_frac=val_frac, test_frac=test_frac)
    for e in free:
        e.split = assigned[e.key]
    return entries


def _common_spacing(images: list[Path]) -> tuple[float, float, float] | None:
    """Most common voxel spacing (mm, rounded to 1e-4) among readable image headers."""
    counts: Counter = Counter()
    for p in images:
        try:
            zooms = nib.load(str(p)).header.get_zooms()[:3]
        except Exception:
            continue
        if len(zooms) == 3:
            counts[tuple(round(float(z), 4) for z in zooms)] += 1
    if not counts:
        return None
    common = counts.most_common(1)[0][0]
    off = sum(n for z, n in counts.items() if any(abs(a - b) > 0.1 * b for a, b in zip(z, common)))
    if off:
        log.warning("%d of %d images have a spacing more than 10%% from the most common %s mm; `data check` "
                    "will flag them (widen --spacing-tolerance or drop spacing_mm if that is expected)",
                    off, sum(counts.values()), common)
    return common


def _finish(entries, out, *, site, root, label_values, source, seed, val_frac, test_frac, splits, progress) -> Manifest:
    if not entries:
        raise DataImportError(f"{root}: no cases found")
    entries = _assign_splits(
        entries, seed=seed, val_frac=val_frac, test_frac=test_frac, splits_file=splits, progress=progress
    )
    dup = [k for k, n in Counter(e.key for e in entries).items() if n > 1]
    if dup:
        log.warning("duplicate case key(s) in %s: %s (`data check` will flag them)", root, ", ".join(dup))
    manifest = Manifest(
        site=site,
        root=Path(root).resolve(),
        cases=[Case(key=e.key, split=e.split, image=e.image, masks=dict(e.masks)) for e in entries],
        spacing_mm=_common_spacing([e.image for e in entries]),
        label_values=tuple(int(v) for v in label_values),
        source=source,
    )
    write_manifest(manifest, out)
    log.debug("wrote %s: %d cases %s", out, len(manifest.cases), manifest.counts())
    return manifest


def import_brats(
    src, out, *, site="brats", seed=0, val_frac=0.2, test_frac=0.0, splits=None, progress=True
) -> Manifest:
    """BraTS 2021 folder -> manifest at ``out``. Keys are the case folder names; only ``*_t2`` and
    ``*_seg`` are used (labels 0, 1, 2, 4; whole tumour = label > 0). A case without ``_seg`` goes to
    ``test`` with no mask; a case folder without ``_t2`` is skipped with a warning."""
    src = Path(src)
    if not src.is_dir():
        raise DataImportError(f"{src}: not a folder")
    entries = []
    for case_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        key = case_dir.name
        t2 = _first_existing(case_dir, key, "t2")
        if t2 is None:
            if any(case_dir.glob("*.nii*")):
                log.warning("BraTS case %s has no %s_t2.nii.gz: skipped", key, key)
            continue
        seg = _first_existing(case_dir, key, "seg")
        if seg is None:
            log.warning("BraTS case %s has no segmentation: put in test with no mask", key)
        entries.append(_Entry(key, t2, {"ref": seg} if seg else {}, None if seg else "test"))
    return _finish(
        entries, out, site=site, root=src, label_values=BRATS_LABEL_VALUES, source="brats2021",
        seed=seed, val_frac=val_frac, test_frac=test_frac, splits=splits, progress=progress,
    )


def _first_existing(folder: Path, key: str, suffix: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{key}_{suffix}{ext}"
        if p.is_file():
            return p
    return None


# ----------------------------------------------------------------------------- nnU-Net raw

#: Channel names that start with "t2" but are not T2-weighted images: BraTS 2023's "t2f" is T2-FLAIR.
_NOT_T2 = {"t2f"}


def is_t2(name: str) -> bool:
    """Whether a channel / modality name (nnU-Net dataset.json ``channel_names``) means a T2-weighted image:
    ``T2``, ``t2w``, ``T2-weighted``, ``t2_tse`` ... - lower case, ``*`` read as "star", letters and digits
    only, it starts with "t2" - but not FLAIR (``FLAIR``, ``T2-FLAIR``, BraTS 2023's ``t2f``) nor T2*
    (``T2*``, ``t2star``). The one rule for the data importer and the engine's ``import-nnunet``."""
    norm = re.sub(r"[^a-z0-9]", "", str(name).lower().replace("*", "star"))
    if norm in _NOT_T2 or "flair" in norm or "star" in norm:
        return False
    return norm.startswith("t2")


def t2_channel(channel_names: dict, channel: str | int | None = None) -> int:
    """The index of the T2 scan among an nnU-Net ``dataset.json``'s ``channel_names`` (v1: ``modality``),
    e.g. ``{"0": "T1", "1": "T2"}`` -> 1. ``channel`` (an index, or a name in any case) picks it
    explicitly; otherwise the one name :func:`is_t2` accepts, or a lone channel whatever its name (with
    a warning). Raises ValueError naming the channels there. Used by the data importer and by
    ``plgg-fl import-nnunet``."""
    names = {int(k): str(v) for k, v in channel_names.items()}
    if channel is not None:
        if str(channel).isdigit() and (not names or int(channel) in names):
            return int(channel)
        hits = [i for i, n in names.items() if n.lower() == str(channel).lower()]
        if not hits:
            raise ValueError(f"channel {channel!r} not in channel_names {names}")
        return hits[0]
    t2 = [i for i, n in names.items() if is_t2(n)]
    if len(t2) == 1:
        return t2[0]
    if len(t2) > 1:
        raise ValueError(f"several T2-like channels {[names[i] for i in t2]}; pick one with channel=/--channel")
    if len(names) == 1:
        (i, n), = names.items()
        log.warning("single channel %r is not named T2; using it", n)
        return i
    raise ValueError(f"no T2 channel in channel_names {names}; pick one with channel=/--channel")


def _nnunet_channel(meta: dict, channel, where: Path) -> int:
    try:
        return t2_channel(meta.get("channel_names") or meta.get("modality") or {}, channel)
    except ValueError as exc:
        raise DataImportError(f"{where}: {exc}") from None


def _nnunet_labels(meta: dict) -> tuple[int, ...]:
    labels = meta.get("labels") or {}
    values: set[int] = set()
    for k, v in labels.items():
        if isinstance(v, str) and str(k).lstrip("-").isdigit():  # v1: {"0": "background"}
            values.add(int(k))
        else:  # v2: {"background": 0, "tumour": 1} or region lists [1, 2]
            values.update(int(x) for x in (v if isinstance(v, list) else [v]))
    return tuple(sorted(values | {0})) if values else BINARY_LABEL_VALUES


def import_nnunet(
    src, out, *, site=None, channel=None, seed=0, val_frac=0.2, test_frac=0.0, splits=None, progress=True
) -> Manifest:
    """nnU-Net raw dataset -> manifest at ``out``.

    Reads ``dataset.json`` (v1 or v2) for the channel names, labels and ``file_ending``; the T2
    channel is found by name (``channel`` overrides: index or name). Cases in ``imagesTr`` with a
    label in ``labelsTr`` are split into train/val(/test) from ``seed``; ``imagesTs`` cases are
    ``test`` (with ``labelsTs`` masks if present); ``imagesTr`` cases without a label go to test.
    ``site`` defaults to the dataset folder name.
    """
    src = Path(src)
    meta_path = src / "dataset.json"
    if not meta_path.is_file():
        raise DataImportError(f"{src}: no dataset.json (not an nnU-Net raw dataset)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataImportError(f"{meta_path}: cannot read: {exc}") from exc
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise DataImportError(f"{meta_path}: file_ending {ending!r} is not NIfTI; only .nii/.nii.gz are supported")
    ch = _nnunet_channel(meta, channel, meta_path)
    entries = _nnunet_folder(src, "imagesTr", "labelsTr", ch, ending, fixed_split=None)
    n_tr = sum(bool(e.masks) for e in entries)
    entries += _nnunet_folder(src, "imagesTs", "labelsTs", ch, ending, fixed_split="test")
    n_train = meta.get("numTraining")
    if isinstance(n_train, int) and n_train != n_tr:
        log.warning("%s: numTraining is %d but %d labelled imagesTr cases were found", meta_path, n_train, n_tr)
    return _finish(
        entries, out, site=site or src.name, root=src, label_values=_nnunet_labels(meta), source="nnunet_raw",
        seed=seed, val_frac=val_frac, test_frac=test_frac, splits=splits, progress=progress,
    )


def _nnunet_folder(src: Path, images: str, labels: str, ch: int, ending: str, fixed_split) -> list[_Entry]:
    folder = src / images
    if not folder.is_dir():
        return []
    tail = f"_{ch:04d}{ending}"
    entries = []
    for img in sorted(folder.glob(f"*{tail}")):
        key = img.name[: -len(tail)]
        label = src / labels / f"{key}{ending}"
        masks = {"ref": label} if label.is_file() else {}
        split = fixed_split
        if not masks and fixed_split is None:
            log.warning("%s/%s has no label in %s: put in test with no mask", images, img.name, labels)
            split = "test"
        entries.append(_Entry(key, img, masks, split))
    return entries


# ----------------------------------------------------------------------------- plain pairs


def _pattern_regex(pattern: str) -> re.Pattern:
    """Glob-like pattern with ``{key}``/``{rater}`` placeholders -> regex on posix relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("{key}", i):
            out, i = out + "(?P<key>[^/]+?)", i + 5
        elif pattern.startswith("{rater}", i):
            out, i = out + "(?P<rater>[^/]+?)", i + 7
        elif pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _as_glob(pattern: str) -> str:
    return pattern.replace("{key}", "*").replace("{rater}", "*")


def import_pairs(
    src,
    out,
    *,
    image_glob="*_t2.nii.gz",
    mask_pattern="{key}_seg.nii.gz",
    raters=None,
    site=None,
    label_values=BINARY_LABEL_VALUES,
    seed=0,
    val_frac=0.2,
    test_frac=0.0,
    splits=None,
    progress=True,
) -> Manifest:
    """Folder of image/mask pairs -> manifest at ``out``. Patterns are relative to ``src``.

    ``image_glob``: a glob whose first ``*`` in the file name is the case key (``*_t2.nii.gz``,
    ``images/*.nii.gz``), or a pattern with an explicit ``{key}``. ``mask_pattern``: where a case's
    mask lies, with ``{key}`` and optionally ``{rater}`` for several references
    (``{key}_seg_{rater}.nii.gz``); a list of patterns is tried in order, e.g. a single ``{key}_seg.nii.gz``
    (rater ``ref``) for some cases and per-rater files for others. ``raters`` fixes which raters are used and their order (the
    first is primary); otherwise all found, sorted. Images without any mask go to ``test``.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataImportError(f"{src}: not a folder")
    patterns = [mask_pattern] if isinstance(mask_pattern, str) else list(mask_pattern)
    for pat in patterns:
        if "{key}" not in pat:
            raise DataImportError(f"mask pattern {pat!r} needs a {{key}} placeholder")
    if "{key}" not in image_glob:
        head, _, name = image_glob.rpartition("/")
        if "*" not in name:
            raise DataImportError(f"image glob {image_glob!r} needs a '*' (or {{key}}) in the file name for the case key")
        image_glob = (head + "/" if head else "") + name.replace("*", "{key}", 1)
    img_re, mask_res = _pattern_regex(image_glob), [_pattern_regex(pat) for pat in patterns]
    rel = lambda p: p.relative_to(src).as_posix()  # noqa: E731
    mask_files = {}
    for pat, mask_re in zip(patterns, mask_res):
        for p in sorted(src.glob(_as_glob(pat))):
            m = mask_re.fullmatch(rel(p))
            if m and p.is_file():
                mask_files.setdefault(m["key"], {}).setdefault(m.groupdict().get("rater") or "ref", p)
    entries, seen = [], set()
    for p in sorted(src.glob(_as_glob(image_glob))):
        m = img_re.fullmatch(rel(p))
        if not m or not p.is_file() or any(r.fullmatch(rel(p)) for r in mask_res):
            continue
        key = m["key"]
        seen.add(key)
        found = mask_files.get(key, {})
        order = list(raters) if raters else sorted(found)
        masks = {r: found[r] for r in order if r in found}
        lacking = [r for r in order if r not in found]
        if raters and lacking and masks:
            log.warning("case %s has no mask for rater(s) %s", key, ", ".join(lacking))
        if not masks:
            log.warning("case %s (%s) has no mask matching %s: put in test with no mask", key, rel(p), " or ".join(patterns))
        entries.append(_Entry(key, p, masks, None if masks else "test"))
    for key in sorted(set(mask_files) - seen):
        log.warning("mask(s) for %s match no image (%s): ignored", key, image_glob)
    return _finish(
        entries, out, site=site or src.name, root=src, label_values=label_values, source="pairs",
        seed=seed, val_frac=val_frac, test_frac=test_frac, splits=splits, progress=progress,
    )
