"""Output names and brain-mask matching: every input gets its own mask file, traceable to it.

**Key** of an input (the ``<key>`` of ``<key>_mask.nii.gz``): the file name without its extension
and without the nnU-Net channel suffix ``_0000`` (only that one: ``pat_0002`` stays ``pat_0002``);
a manifest case's ``key``; a DICOM series' folder name. When several inputs of one run share a key
(compared case-insensitively, as macOS and Windows file systems do), each of them gets its nearest
parent folder names folded in front, joined by ``__``, as few as tell them apart:
``patientA/t2.nii.gz`` and ``patientB/t2.nii.gz`` become ``patientA__t2`` and ``patientB__t2``.

A run never writes two inputs' results to one file: inputs that still share a name (``a.nii`` and
``a.nii.gz`` in one folder), or an output that would replace an input, stop the run before any
scan is read (:class:`SetupError`, exit code 2), as does ``--dicom-seg`` with an input that is not
a DICOM series. The same file given twice is segmented once.

**Brain masks** (``--brain-mask DIR``) are matched by exact file name: ``DIR/<key>.nii.gz``,
``<key>.nii``, ``<key>_brainmask.nii.gz`` or ``<key>_brainmask.nii``, with the scan's final key
(the one in ``volumes.csv``). A scan with none of these, or with more than one, fails on its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from plgg_fl.predict.io import ScanInput, SetupError

log = logging.getLogger(__name__)
FOLD_SEP = "__"
BRAIN_MASK_FORMS = ("{key}.nii.gz", "{key}.nii", "{key}_brainmask.nii.gz", "{key}_brainmask.nii")


def writes_dicom_seg(item: ScanInput, dicom_seg: bool | None) -> bool:
    """Whether ``item`` gets a DICOM SEG: ``dicom_seg`` if given, else iff it is a DICOM series."""
    return item.kind == "dicom" if dicom_seg is None else bool(dicom_seg)


def output_files(item: ScanInput, out_dir: Path, prob: bool, dicom_seg: bool | None = None) -> dict[str, Path]:
    """The files ``item`` writes, by kind: ``mask`` ``<key>_mask.nii.gz``; with ``prob``, ``prob``
    ``<key>_prob.nii.gz``; if it gets a DICOM SEG (:func:`writes_dicom_seg`), ``dicom_seg`` ``<key>_seg.dcm``."""
    files = {"mask": out_dir / f"{item.key}_mask.nii.gz"}
    if prob:
        files["prob"] = out_dir / f"{item.key}_prob.nii.gz"
    if writes_dicom_seg(item, dicom_seg):
        files["dicom_seg"] = out_dir / f"{item.key}_seg.dcm"
    return files


def output_paths(item: ScanInput, out_dir: Path, prob: bool, dicom_seg: bool | None = None) -> list[Path]:
    """Every file ``item`` writes (:func:`output_files`), mask first."""
    return list(output_files(item, out_dir, prob, dicom_seg).values())


def drop_repeats(items: list[ScanInput]) -> list[ScanInput]:
    """``items`` without a second mention of the same file (or DICOM series); first one kept."""
    seen: set[tuple[Path, str | None]] = set()
    kept = []
    for it in items:
        ident = (it.path.resolve(), it.series_uid)
        if ident in seen:
            log.warning("%s: given more than once; segmented once", it.path)
            continue
        seen.add(ident)
        kept.append(it)
    return kept


def make_keys_unique(items: list[ScanInput]) -> None:
    """Fold parent folder names into keys that several inputs share (in place); see module doc."""
    groups: dict[str, list[ScanInput]] = {}
    for it in items:
        groups.setdefault(it.key.casefold(), []).append(it)
    for group in groups.values():
        if len(group) > 1:
            _fold_parents(group)


def _fold_parents(group: list[ScanInput]) -> None:
    paths = [Path(os.path.abspath(it.path)) for it in group]  # ".." folded, symlinks kept as named
    parents = [[part for part in p.parent.parts if part != p.anchor] for p in paths]
    for n in range(1, max(len(p) for p in parents) + 1):
        labels = [FOLD_SEP.join(p[-n:]) for p in parents]
        if len({lab.casefold() for lab in labels}) == len(group):
            for it, lab in zip(group, labels):
                it.key = f"{lab}{FOLD_SEP}{it.key}"
            return  # otherwise (same folder) the clash check names them


def check_outputs(items: list[ScanInput], out_dir: Path, prob: bool, dicom_seg: bool | None = None) -> None:
    """Raise :class:`SetupError` unless every output file is used once and replaces no input, and
    ``dicom_seg`` (True: a DICOM SEG for every input) is only asked for DICOM series."""
    inputs = {it.path.resolve(): it for it in items}
    inputs.update({it.brain_mask.resolve(): it for it in items if it.brain_mask is not None})
    owner: dict[str, ScanInput] = {}
    for it in items:
        if not it.key or it.key in (".", "..") or any(c in it.key for c in "/\\\0"):
            raise SetupError(f"key {it.key!r} cannot be a file name", it.path)
        if dicom_seg and it.kind != "dicom":
            raise SetupError("--dicom-seg: not a DICOM series; a DICOM SEG is written over the source DICOM images "
                             "(DICOM inputs get one by default); drop --dicom-seg or give only DICOM folders", it.path)
        for p in output_paths(it, out_dir, prob, dicom_seg):
            other = owner.setdefault(p.name.casefold(), it)
            if other is not it:
                raise SetupError(f"{other.path} and {it.path} would both be written to one file; rename one, or segment them in separate runs", p)
            if p.resolve() in inputs:
                raise SetupError(f"output is an input; writing {it.path}'s result there would replace it; choose another --out", p)


def attach_brain_masks(items: list[ScanInput], brain_masks: str | Path) -> None:
    """Give each item its brain mask: one file for a single input, else exact ``<key>`` names in a folder."""
    bm = Path(brain_masks)
    if bm.is_file():
        if len(items) != 1:
            raise SetupError(f"one brain-mask file for {len(items)} input scans; pass a folder of <key>.nii.gz masks", bm)
        items[0].brain_mask = bm
        return
    if not bm.is_dir():
        raise SetupError("brain mask file or folder not found", bm)
    present = {p.name for p in bm.iterdir() if p.is_file()}
    for it in items:
        wanted = [form.format(key=it.key) for form in BRAIN_MASK_FORMS]
        found = [n for n in wanted if n in present]
        if len(found) == 1:
            it.brain_mask = bm / found[0]
        elif found:
            it.brain_mask_error = f"several brain masks in {bm}: {', '.join(found)}; keep one"
        else:
            it.brain_mask_error = f"no brain mask: {bm} holds none of {', '.join(wanted)}"
