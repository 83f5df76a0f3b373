"""Validation of a site manifest against the files it points to.

:func:`check_manifest` reads every image and mask once (the whole gzip stream, so a truncated or
corrupt file is caught, not just its header) and reports *every* problem as a :class:`Problem`
(case, file, code, message, severity). A case with any ``error`` is unusable; ``warning`` s are
reported but do not block. :func:`usable_cases` is what training, validation and evaluation call:
the cases of a split that pass, with each left-out case logged on the ``plgg_fl.data`` logger.

Checks (code: severity):
  ``missing_file``, ``unreadable``, ``corrupt`` (truncated/corrupt gzip or data), ``not_3d``,
  ``shape_mismatch`` / ``affine_mismatch`` (mask vs image), ``label_values`` (mask values outside
  ``manifest.label_values``), ``nonfinite`` (NaN/inf intensities), ``all_zero`` (image),
  ``no_mask`` (train/val case without a reference), ``spacing`` (voxel spacing more than
  ``spacing_tolerance`` relative from ``manifest.spacing_mm``), ``duplicate_key``, ``split_overlap``
  (same key or same image file in two splits): errors. ``empty_mask`` (no foreground in a train or
  val reference), ``duplicate_image`` (same image twice within one split), ``squeezed_4d`` (a 4D
  file whose 4th dimension is 1, read as 3D): warnings.

Source files are only read, never modified.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from plgg_fl.data.manifest import SPLITS, Case, Manifest

__all__ = ["Problem", "CheckReport", "check_manifest", "usable_cases"]

log = logging.getLogger("plgg_fl.data")
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One problem of one case: ``file`` is relative to the data root (``-`` for the case as a whole)."""

    case: str
    split: str
    file: str
    code: str
    message: str
    severity: str = ERROR

    def line(self) -> str:
        """``ERROR key file: message`` on one line."""
        msg = " ".join(self.message.split())
        return f"{self.severity.upper()} {self.case} {self.file}: {msg}"


@dataclass
class CheckReport:
    """Every problem found in a manifest; ``splits`` are the splits whose files were read."""

    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    splits: tuple[str, ...] = SPLITS

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def for_case(self, key: str) -> list[Problem]:
        return [p for p in self.problems if p.case == key]

    def unusable_keys(self) -> set[str]:
        return {p.case for p in self.errors}

    def checked_cases(self) -> list[Case]:
        return [c for c in self.manifest.cases if c.split in self.splits]

    def summary(self) -> str:
        cases = self.checked_cases()
        bad = self.unusable_keys()
        usable = sum(c.key not in bad for c in cases)
        return (
            f"{self.manifest.site}: {len(cases)} cases, {usable} usable, "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )

    def to_dict(self) -> dict:
        cases = self.checked_cases()
        bad = self.unusable_keys()
        return {
            "site": self.manifest.site,
            "manifest": str(self.manifest.path) if self.manifest.path else None,
            "splits": list(self.splits),
            "n_cases": len(cases),
            "n_usable": sum(c.key not in bad for c in cases),
            "unusable": sorted(bad),
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass
class _FileInfo:
    """What one read of a file tells: a fatal problem, or its geometry and value summary."""

    fatal: tuple[str, str] | None = None  # (code, message)
    shape: tuple[int, ...] = ()
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] = ()
    ndim_problem: str | None = None  # not 3D (error)
    squeezed: bool = False  # trailing singleton 4th dim read as 3D (warning)
    n_nonfinite: int = 0
    all_zero: bool = False
    values: np.ndarray | None = None  # unique values (masks)
    n_foreground: int = 0


def _nifti_from_bytes(raw: bytes):
    """NIfTI-1 or -2 image from the bytes of an uncompressed file (chosen by its header size field)."""
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")} if len(raw) >= 4 else set()
    if 348 in sizes:
        return nib.Nifti1Image.from_bytes(raw)
    if 540 in sizes:
        return nib.Nifti2Image.from_bytes(raw)
    raise ValueError("not a NIfTI-1/2 file: bad header size field" if raw else "empty file")


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def _read(path: Path, role: str) -> _FileInfo:
    """Read a file completely (gzip stream to its end, CRC checked) and summarise it for ``role``."""
    if not path.is_file():
        return _FileInfo(fatal=("missing_file", "file not found"))
    name = path.name.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return _FileInfo(fatal=("unreadable", f"cannot read file ({_exc(exc)})"))
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, zlib.error, OSError) as exc:
            return _FileInfo(fatal=("corrupt", f"truncated or corrupt gzip ({_exc(exc)})"))
    try:
        img = _nifti_from_bytes(raw) if name.endswith((".nii", ".nii.gz")) else nib.load(str(path))
    except Exception as exc:
        return _FileInfo(fatal=("unreadable", f"unreadable image file ({_exc(exc)})"))
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        return _FileInfo(fatal=("corrupt", f"truncated or corrupt image data ({_exc(exc)})"))
    info = _FileInfo(shape=tuple(data.shape), affine=img.affine, zooms=tuple(float(z) for z in img.header.get_zooms()))
    if data.ndim == 4 and data.shape[3] == 1:
        data, info.squeezed, info.shape = data[..., 0], True, tuple(data.shape[:3])
    if data.ndim != 3:
        info.ndim_problem = f"not 3D: shape {tuple(data.shape)} ({data.ndim}D)"
        return info
    if role == "image":
        if np.issubdtype(data.dtype, np.floating):
            info.n_nonfinite = int(np.count_nonzero(~np.isfinite(data)))
        info.all_zero = not np.any(data)
    else:
        info.values = _unique(data)
        info.n_foreground = int(np.count_nonzero(data > 0))
    return info


def _unique(data: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a bincount for small-range integer masks (much faster than a sort)."""
    if np.issubdtype(data.dtype, np.integer) and data.size:
        lo, hi = int(data.min()), int(data.max())
        if hi - lo < 1 << 16:
            return np.flatnonzero(np.bincount(data.ravel().astype(np.int64) - lo)) + lo
    return np.unique(data)


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _fmt(v) -> str:
    return " x ".join(f"{float(x):.3g}" for x in v)


def check_manifest(
    manifest: Manifest,
    *,
    spacing_tolerance: float = 0.10,
    affine_tolerance: float = 1e-3,
    splits: tuple[str, ...] | list[str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check ``manifest`` and the files of the cases in ``splits`` (default: all) -> :class:`CheckReport`.

    ``spacing_tolerance``: allowed relative difference of each voxel spacing (mm) from
    ``manifest.spacing_mm`` (0.10 = 10%). ``affine_tolerance``: absolute and relative tolerance on
    the 4x4 image vs mask affines (mm). Cross-case checks (keys, splits) always cover all cases.
    Each file is read once per call, even when several cases point to it, by ``workers`` threads
    (default: up to 4; decompression runs outside the GIL).
    """
    splits = tuple(splits) if splits is not None else SPLITS
    report = CheckReport(manifest=manifest, splits=splits)
    add = report.problems.append
    root = manifest.root
    _cross_case(manifest, add)
    cases = [c for c in manifest.cases if c.split in splits]
    cache = _read_all(cases, workers, progress, manifest.site)

    def info(path: Path, role: str) -> _FileInfo:
        return cache[(Path(path).resolve(), role)]

    allowed = set(manifest.label_values)
    for case in cases:
        def P(file, code, msg, sev=ERROR, case=case):
            add(Problem(case.key, case.split, file, code, msg, sev))

        if case.split in ("train", "val") and not case.masks:
            P("-", "no_mask", f"a {case.split} case needs a reference mask")
        img_rel = _rel(case.image, root)
        img = info(case.image, "image")
        img_ok = _file_problems(img, img_rel, P)
        if img_ok:
            if img.n_nonfinite:
                P(img_rel, "nonfinite", f"{img.n_nonfinite} NaN/inf intensities")
            if img.all_zero:
                P(img_rel, "all_zero", "image is all zeros")
            if manifest.spacing_mm is not None:
                z, want = np.array(img.zooms[:3]), np.array(manifest.spacing_mm)
                if np.any(np.abs(z - want) > spacing_tolerance * want):
                    P(img_rel, "spacing", f"spacing {_fmt(z)} mm is far from the manifest's {_fmt(want)} mm "
                      f"(tolerance {spacing_tolerance:.0%})")
        for rater, mpath in case.masks.items():
            m_rel = _rel(mpath, root)
            m = info(mpath, "mask")
            if not _file_problems(m, m_rel, P):
                continue
            if img_ok and m.shape != img.shape:
                P(m_rel, "shape_mismatch", f"mask shape {m.shape} != image shape {img.shape} (voxels)")
            elif img_ok and not np.allclose(m.affine, img.affine, rtol=affine_tolerance, atol=affine_tolerance):
                diff = float(np.max(np.abs(m.affine - img.affine)))
                P(m_rel, "affine_mismatch", f"mask affine differs from image affine (max |diff| {diff:.3g} mm)")
            bad = [v for v in m.values.tolist() if v not in allowed]
            if bad:
                shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
                P(m_rel, "label_values", f"mask values {shown} outside allowed {sorted(allowed)}")
            if m.n_foreground == 0 and case.split in ("train", "val"):
                P(m_rel, "empty_mask", f"empty reference mask (rater {rater}) in a {case.split} case", WARNING)
    return report


def _read_all(cases: list[Case], workers: int | None, progress: bool, site: str) -> dict:
    """(resolved path, role) -> :class:`_FileInfo` for every image and mask of ``cases``, each read once."""
    todo = {(Path(c.image).resolve(), "image"): c.image for c in cases}
    todo.update({(Path(p).resolve(), "mask"): p for c in cases for p in c.masks.values()})
    workers = workers or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(todo), desc=f"checking {site}", unit="file", disable=not progress or len(todo) < 20)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {k: pool.submit(_read, Path(p), k[1]) for k, p in todo.items()}
        for fut in as_completed(futures.values()):
            bar.update(1)
    return {k: f.result() for k, f in futures.items()}


def _file_problems(fi: _FileInfo, rel: str, P) -> bool:
    """Report a file's read/shape problems; True when its content can be checked further."""
    if fi.fatal:
        P(rel, *fi.fatal)
        return False
    if fi.ndim_problem:
        P(rel, "not_3d", fi.ndim_problem)
        return False
    if fi.squeezed:
        P(rel, "squeezed_4d", "4D file with a single volume (4th dim 1): read as 3D", WARNING)
    return True


def _cross_case(manifest: Manifest, add) -> None:
    """Duplicate keys, a key or an image file in two splits, an image twice within one split."""
    by_key: dict[str, list[Case]] = defaultdict(list)
    by_image: dict[Path, list[Case]] = defaultdict(list)
    for c in manifest.cases:
        by_key[c.key].append(c)
        by_image[Path(c.image).resolve()].append(c)
    for key, cs in by_key.items():
        if len(cs) < 2:
            continue
        splits = sorted({c.split for c in cs})
        for c in cs:
            f = _rel(c.image, manifest.root)
            if len(splits) > 1:
                add(Problem(key, c.split, f, "split_overlap", f"case key listed in several splits: {', '.join(splits)}"))
            else:
                add(Problem(key, c.split, f, "duplicate_key", f"case key listed {len(cs)} times in {c.split}"))
    for path, cs in by_image.items():
        keys = {c.key for c in cs}
        if len(keys) < 2:  # the same key twice is reported above
            continue
        splits = {c.split for c in cs}
        for c in cs:
            others = ", ".join(f"{o.key} ({o.split})" for o in cs if o.key != c.key)
            f = _rel(c.image, manifest.root)
            if len(splits) > 1:
                add(Problem(c.key, c.split, f, "split_overlap", f"same image file as case(s) {others} in another split"))
            else:
                add(Problem(c.key, c.split, f, "duplicate_image", f"same image file as case(s) {others}", WARNING))


def usable_cases(manifest: Manifest, split: str, report: CheckReport | None = None, excluded: dict[str, int] | None = None,
                 **check_kwargs) -> list[Case]:
    """The cases of ``split`` with no error, in manifest order; each left-out case is logged with its reasons.

    Without ``report`` the split is checked now (``check_kwargs`` go to :func:`check_manifest`).
    ``excluded``, when given, receives counts only (no case keys): ``cases`` = cases left out, and per
    problem code (``corrupt``, ``unreadable``, ``missing_file``, ...) the number of left-out cases with it.
    """
    cases = manifest.split(split)
    if report is None:
        check_kwargs.setdefault("progress", False)
        report = check_manifest(manifest, splits=[split], **check_kwargs)
    elif split not in report.splits:
        raise ValueError(f"the report did not read split {split!r} (read: {', '.join(report.splits)})")
    reasons: dict[str, list[str]] = defaultdict(list)
    codes: dict[str, set[str]] = defaultdict(set)
    for p in report.errors:
        reasons[p.case].append(f"{p.file}: {p.message}")
        codes[p.case].add(p.code)
    kept = []
    for c in cases:
        if c.key in reasons:
            log.warning("leaving out %s case %s: %s", split, c.key, "; ".join(reasons[c.key]))
            if excluded is not None:
                excluded["cases"] = excluded.get("cases", 0) + 1
                for code in sorted(codes[c.key]):
                    excluded[code] = excluded.get(code, 0) + 1
        else:
            kept.append(c)
    if len(kept) < len(cases):
        log.warning("%s %s: %d of %d cases usable", manifest.site, split, len(kept), len(cases))
    return kept
