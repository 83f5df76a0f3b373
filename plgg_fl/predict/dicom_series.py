"""DICOM series inputs: one series per folder, its slices checked from their headers before any voxel is read.

SimpleITK/GDCM read a folder's series as a regular grid whatever the files say: a missing slice
becomes a slightly larger, uniform slice spacing (a warning on stderr, nothing more), and slices of
another orientation are stacked in as if they were parallel. The mask would then be misplaced.
Here each of these is an :class:`InputError` naming the folder, the problem and what to do, found
from the files' own headers (pydicom) - as is a folder holding two series, which used to become two
inputs ``<folder>_1`` / ``<folder>_2`` (a mask could then carry the other series' name).

The headers are returned in the order SimpleITK stacks the slices (slice ``k`` of the ``(i, j, k)``
array is ``headers[k]``) and :func:`check_stacking` confirms that order against the grid SimpleITK
returned, so a DICOM SEG written from them (:mod:`plgg_fl.predict.dicom_seg`) puts frame ``k`` on
slice ``k``. Positions are in mm, in DICOM's patient coordinates (LPS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plgg_fl.predict.io import InputError, ScanInput

ORIENTATION_ATOL = 1e-3  # direction cosines: 0.06 degrees
SPACING_RTOL = 0.1  # a slice may sit at most 10% of the slice spacing off the even grid SimpleITK assumes
POSITION_ATOL_MM = 0.01  # positions equal within this (headers print them with a few decimals)
_NEEDED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def find_series(folder: Path) -> list[ScanInput]:
    """One :class:`ScanInput` per folder (``folder`` and every folder below it) that holds DICOM series.

    Key: the folder's path below ``folder`` with ``/`` as ``_`` (``folder``'s own name for itself).
    A folder holding two or more series gets one input whose ``error`` names them; it fails on its own.
    """
    import SimpleITK as sitk

    found: list[ScanInput] = []
    for d in [folder] + sorted(p for p in folder.rglob("*") if p.is_dir()):
        uids = tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ())
        if not uids:
            continue
        key = d.relative_to(folder).as_posix().replace("/", "_") if d != folder else folder.name
        if len(uids) == 1:
            found.append(ScanInput(key=key, path=d, kind="dicom", series_uid=uids[0]))
        else:
            found.append(ScanInput(key=key, path=d, kind="dicom", error=several_series(d, uids)))
    return found


def several_series(folder: Path, uids: Sequence[str]) -> str:
    """The problem text for a folder holding several series: each by SeriesInstanceUID, description and file count."""
    import SimpleITK as sitk

    parts = []
    for uid in uids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        first = _header(folder, names[0]) if names else {}
        parts.append(f"{first.get('SeriesInstanceUID', uid)} \"{first.get('SeriesDescription', '')}\" ({len(names)} files)")
    return (f"{len(uids)} DICOM series in one folder: {'; '.join(parts)}. None of them is segmented (a mask could end up "
            "under the other series' name); put each series in its own folder and pass the folder of the one wanted")


def series_headers(item: ScanInput) -> tuple[list[str], list[Any]]:
    """(file names, pydicom headers without pixels) of ``item``'s series in SimpleITK's slice order, checked.

    Raises :class:`InputError` if a file is unreadable or the slices do not form one regular 3D grid
    (:func:`check_slices`).
    """
    import SimpleITK as sitk

    names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(item.path), item.series_uid or ""))
    if not names:
        raise InputError(item.path, "no DICOM series found in this folder")
    headers = [_header(item.path, n) for n in names]
    check_slices(item.path, names, headers)
    return names, headers


def _header(folder: Path, name: str) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(name, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for damaged files
        raise InputError(folder, f"unreadable DICOM file {Path(name).name}: {type(exc).__name__}: {exc}") from exc


def is_multiframe(headers: Sequence[Any]) -> bool:
    """True for one file holding all slices (enhanced MR): its geometry is per frame, not per file."""
    return len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1


def check_slices(folder: Path, names: Sequence[str], headers: Sequence[Any]) -> None:
    """Raise :class:`InputError` unless the files are slices of one orientation and size, evenly spaced.

    Checked in this order: the geometry attributes are present; one ImageOrientationPatient; one
    size and pixel spacing; no two slices at one position; slices stacked along their normal; every
    slice within ``SPACING_RTOL`` of a slice spacing of the even grid from the first to the last
    slice (a missing slice breaks this). A single multi-frame file is left to SimpleITK.
    """
    if is_multiframe(headers):
        return
    for name, h in zip(names, headers):
        missing = [a for a in _NEEDED if a not in h]
        if missing:
            raise InputError(folder, f"{Path(name).name} has no {', '.join(missing)}: not a slice of a 3D series; "
                                     "export the T2 series as images (MR Image Storage) again")
    _check_orientation(folder, names, headers)
    _check_size(folder, names, headers)
    _check_positions(folder, names, headers)


def _orientation(h: Any) -> np.ndarray:
    """ImageOrientationPatient as a (6,) float array: row direction, then column direction (unit vectors, LPS)."""
    return np.asarray([float(v) for v in h.ImageOrientationPatient], dtype=np.float64)


def _plane(iop: np.ndarray) -> str:
    """axial | coronal | sagittal: the plane the slice normal is closest to."""
    normal = np.cross(iop[:3], iop[3:])
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _check_orientation(folder: Path, names: Sequence[str], headers: Sequence[Any]) -> None:
    groups: list[tuple[np.ndarray, list[str]]] = []
    for name, h in zip(names, headers):
        iop = _orientation(h)
        for ref, members in groups:
            if np.allclose(iop, ref, atol=ORIENTATION_ATOL):
                members.append(Path(name).name)
                break
        else:
            groups.append((iop, [Path(name).name]))
    if len(groups) > 1:
        kinds = "; ".join(f"{len(m)} file(s) {_plane(iop)} {np.round(iop, 3).tolist()} (e.g. {m[0]})" for iop, m in groups)
        raise InputError(folder, f"mixed slice orientations in one series (ImageOrientationPatient differs): {kinds}. "
                                 "A localiser or slices of another plane are mixed in; keep only the T2 slices of one "
                                 "orientation in the folder")


def _check_size(folder: Path, names: Sequence[str], headers: Sequence[Any]) -> None:
    ref = headers[0]
    for name, h in zip(names, headers):
        same = (h.Rows, h.Columns) == (ref.Rows, ref.Columns)
        if not same or not np.allclose([float(v) for v in h.PixelSpacing], [float(v) for v in ref.PixelSpacing], atol=1e-4):
            raise InputError(folder, f"slices differ in size or pixel spacing: {Path(name).name} is {h.Rows}x{h.Columns} at "
                                     f"{list(h.PixelSpacing)} mm, {Path(names[0]).name} {ref.Rows}x{ref.Columns} at "
                                     f"{list(ref.PixelSpacing)} mm; keep only the slices of one series in the folder")


def slice_positions(headers: Sequence[Any]) -> np.ndarray:
    """ImagePositionPatient of every header, (n_slices, 3) in mm (LPS)."""
    return np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers], dtype=np.float64)


def _check_positions(folder: Path, names: Sequence[str], headers: Sequence[Any]) -> None:
    """Slices in SimpleITK's order must climb along the normal in even steps (see :func:`check_slices`)."""
    if len(headers) < 2:
        return
    iop = _orientation(headers[0])
    normal = np.cross(iop[:3], iop[3:])
    pos = slice_positions(headers)
    along = pos @ normal  # (n,) mm along the slice normal
    order = np.argsort(along, kind="stable")
    dup = np.flatnonzero(np.diff(along[order]) < POSITION_ATOL_MM)
    if dup.size:
        a, b = Path(names[order[dup[0]]]).name, Path(names[order[dup[0] + 1]]).name
        raise InputError(folder, f"{dup.size} slice(s) at the position of another ({a} and {b} at {along[order[dup[0]]]:.2f} mm): "
                                 "several echoes, repeats or time points in one series; keep the T2 slices of one acquisition")
    gaps = np.diff(along)
    if (gaps <= 0).any():
        raise InputError(folder, "slices could not be put in position order; convert the series to NIfTI (dcm2niix) and give that")
    spacing = (along[-1] - along[0]) / (len(along) - 1)  # the even spacing SimpleITK assumes
    tol = SPACING_RTOL * spacing + POSITION_ATOL_MM
    sideways = np.linalg.norm((pos - pos[0]) - np.outer(along - along[0], normal), axis=1)
    if sideways.max() > tol:
        raise InputError(folder, f"slices are not stacked along their normal (up to {sideways.max():.2f} mm sideways: "
                                 "gantry tilt or a sheared stack); resample the series onto a regular grid first")
    off = np.abs(along - (along[0] + spacing * np.arange(len(along))))
    if off.max() > tol:
        raise InputError(folder, _uneven_text(names, gaps, off))


def _uneven_text(names: Sequence[str], gaps: np.ndarray, off: np.ndarray) -> str:
    """The message for unevenly spaced slices: the odd gap, its files, and how many slices seem missing."""
    median = float(np.median(gaps))
    n = int(np.argmax(np.abs(gaps - median)))
    missing = round(gaps[n] / median) - 1
    why = f"{missing} slice(s) missing there" if missing >= 1 else "uneven slice spacing"
    return (f"slice spacing is not even: {gaps[n]:.2f} mm between {Path(names[n]).name} and {Path(names[n + 1]).name}, "
            f"{median:.2f} mm elsewhere ({why}; {len(names)} files). Read as one even grid, slices would be up to "
            f"{off.max():.2f} mm off and the mask misplaced; export the complete series again")


def check_stacking(folder: Path, headers: Sequence[Any], affine_ras: np.ndarray, shape: Sequence[int]) -> None:
    """Raise :class:`InputError` unless SimpleITK's grid puts slice ``k`` where ``headers[k]`` says it is.

    ``affine_ras``: voxel ``(i, j, k)`` -> RAS (mm) of the array SimpleITK returned, ``shape`` its
    ``(i, j, k)`` shape. Column ``i`` runs along DICOM columns, ``j`` along rows. A tolerance of half
    a slice: this checks the order of the headers, :func:`check_slices` the evenness.
    """
    if is_multiframe(headers):
        return
    h0 = headers[0]
    if tuple(shape) != (int(h0.Columns), int(h0.Rows), len(headers)):
        raise InputError(folder, f"SimpleITK read shape {tuple(shape)}, the headers say {h0.Columns}x{h0.Rows}x{len(headers)}; "
                                 "convert the series to NIfTI (dcm2niix) and give that")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    grid = (lps[:3, :3] @ np.stack([np.zeros(len(headers)), np.zeros(len(headers)), np.arange(len(headers))])).T + lps[:3, 3]
    off = np.linalg.norm(grid - slice_positions(headers), axis=1)
    step = float(np.linalg.norm(lps[:3, 2]))
    if off.max() > 0.5 * step + POSITION_ATOL_MM:
        raise InputError(folder, f"SimpleITK stacked the slices in another order than their positions (slice {int(np.argmax(off))} "
                                 f"is {off.max():.2f} mm off); convert the series to NIfTI (dcm2niix) and give that")
