"""Reading scans for inference and writing masks atomically on exactly the input's grid.

Inputs: a NIfTI file (``.nii`` / ``.nii.gz``, read with nibabel - the reader MONAI's ``LoadImage``
uses in training, so the affine is the one training saw), another single-file format SimpleITK
reads (``.mha``, ``.nrrd``), a folder of such files, a site manifest, or a DICOM series folder
(one series per folder, its slices checked from their headers by :mod:`plgg_fl.predict.dicom_series`,
then read with SimpleITK/GDCM; its LPS geometry is turned into a RAS affine, the NIfTI convention).

Every array here is in the file's own voxel order ``(i, j, k)`` with a 4x4 voxel -> RAS (mm) affine;
no reorientation happens in this module (the engine's preprocessing does that and inverts it).
Errors are :class:`InputError`, whose message starts with the file and says what is wrong.
"""

from __future__ import annotations

import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from plgg_fl.errors import CommandError
from plgg_fl.predict.runlog import nibabel_notes

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OTHER_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
CHANNEL_SUFFIX = "_0000"  # nnU-Net's first (here: only) input channel
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SetupError(CommandError, ValueError):
    """The run cannot start (exit code 2): unusable --model, --out or --brain-mask, or clashing outputs.
    ``SetupError(what, file)``; ``str(err)`` is ``"<what> (<file>)"``."""


class InputError(ValueError):
    """A scan that cannot be used. ``str(err)`` is ``"<file>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class ScanInput:
    """One thing to segment: a file, or a DICOM series (``path`` = folder, ``series_uid`` set).

    ``error``: why this input cannot be used, found while discovering it (a folder holding two DICOM
    series); it then fails on its own, before it is read.
    """

    key: str
    path: Path
    kind: str  # "nifti" | "sitk" | "dicom"
    series_uid: str | None = None
    brain_mask: Path | None = None
    brain_mask_error: str | None = None  # why no brain mask was matched (that scan then fails)
    error: str | None = None


@dataclass
class Scan:
    """A loaded scan: float32 array in file voxel order, voxel -> RAS affine (mm), and its source."""

    source: ScanInput
    array: np.ndarray
    affine: np.ndarray
    header: Any = None  # nibabel header of a NIfTI input (copied into the outputs)
    extra: dict = field(default_factory=dict)
    file_shape: tuple[int, ...] | None = None  # the file's own shape if it differs, e.g. (X, Y, Z, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size in mm (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in ml (mm^3 / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def key_from_name(path: Path) -> str:
    """``case_0001_0000.nii.gz`` -> ``case_0001``: extension and the nnU-Net channel suffix ``_0000``
    removed, nothing else (``pat_0002.nii.gz`` -> ``pat_0002``)."""
    name = path.name
    for suf in NIFTI_SUFFIXES + OTHER_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    if len(name) > len(CHANNEL_SUFFIX) and name.endswith(CHANNEL_SUFFIX):
        name = name[: -len(CHANNEL_SUFFIX)]
    return name


def _is_image_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and not n.startswith(".") and n.endswith(NIFTI_SUFFIXES + OTHER_SUFFIXES)


def _dicom_series(folder: Path) -> list[ScanInput]:
    from plgg_fl.predict.dicom_series import find_series  # imports this module

    return find_series(folder)


def discover_inputs(source: str | Path, split: str | None = None) -> list[ScanInput]:
    """Expand a file, folder (its files, not sub-folders), manifest or DICOM folder into :class:`ScanInput` items.

    Keys are as found here; making them unique across a run and matching brain masks is
    :mod:`plgg_fl.predict.naming`'s job. Raises :class:`InputError` if ``source`` holds nothing to segment.
    """
    src = Path(source)
    if not src.exists():
        raise InputError(src, "no such file or folder")
    items: list[ScanInput]
    if src.is_file() and src.name.lower().endswith(MANIFEST_SUFFIXES):
        from plgg_fl.data.manifest import load_manifest

        try:
            man = load_manifest(src)
        except ValueError as exc:
            raise InputError(src, f"not a usable manifest: {exc}") from exc
        cases = man.split(split) if split else man.cases
        items = [_manifest_input(c.key, Path(c.image)) for c in cases]
    elif src.is_file():
        items = [ScanInput(key_from_name(src), src, _kind(src))]
    else:
        files = sorted(p for p in src.iterdir() if _is_image_file(p))
        items = [ScanInput(key_from_name(p), p, _kind(p)) for p in files] or _dicom_series(src)
        if not items:
            raise InputError(src, "folder holds no NIfTI/MHA/NRRD file and no DICOM series")
    return items


def _manifest_input(key: str, image: Path) -> ScanInput:
    """A manifest case: its image file, or the one DICOM series in (or below) its image folder, under the
    case's key; a folder with no series or several fails on its own, naming what it found."""
    if not image.is_dir():
        return ScanInput(key, image, _kind(image))
    found = _dicom_series(image)
    if len(found) == 1:
        return ScanInput(key, found[0].path, "dicom", series_uid=found[0].series_uid, error=found[0].error)
    if not found:
        return ScanInput(key, image, "dicom", error="manifest image is a folder holding no DICOM series")
    where = ", ".join(str(f.path) for f in found)
    return ScanInput(key, image, "dicom", error=f"manifest image folder holds {len(found)} DICOM series folders ({where}); "
                     "list the one series folder wanted as the case's image")


def _kind(p: Path) -> str:
    return "nifti" if p.name.lower().endswith(NIFTI_SUFFIXES) else "sitk"


# ----------------------------------------------------------------------------------------- reading


def read_scan(item: ScanInput) -> Scan:
    """Load ``item`` as a 3D float32 array + RAS affine. Raises :class:`InputError` naming the file."""
    if item.kind == "nifti":
        return _read_nifti(item)
    return _read_sitk(item)


def _read_nifti(item: ScanInput) -> Scan:
    """nibabel's header messages go to the run log (:func:`nibabel_notes`), not to the console."""
    with nibabel_notes(item.path):
        return _load_nifti(item)


def _load_nifti(item: ScanInput) -> Scan:
    path = item.path
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-NIfTI content
        raise InputError(path, f"unreadable: not a valid NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"unreadable: expected NIfTI, got {type(img).__name__}")
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"not a 3D volume: shape {tuple(img.shape)} (one 3D T2 image expected)")
    try:
        arr = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise InputError(path, f"unreadable: file is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    file_shape = tuple(int(n) for n in img.shape) if len(img.shape) != 3 else None
    affine = np.asarray(img.affine, dtype=np.float64)
    return Scan(item, arr, affine, header=img.header, extra={"dtype": str(img.get_data_dtype())}, file_shape=file_shape)


def _read_sitk(item: ScanInput) -> Scan:
    """SimpleITK reader; a DICOM series' headers are checked first and kept in ``extra["dicom_headers"]`` (slice order)."""
    import SimpleITK as sitk

    path = item.path
    headers = None
    if item.kind == "dicom":
        from plgg_fl.predict.dicom_series import series_headers

        names, headers = series_headers(item)  # InputError for missing slices, mixed orientations, ...
    try:
        if item.kind == "dicom":
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"unreadable: {str(exc).strip().splitlines()[-1]}") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"not a grey-level image ({img.GetNumberOfComponentsPerPixel()} components per voxel)")
    file_shape = tuple(img.GetSize()) if img.GetDimension() == 4 and img.GetSize()[3] == 1 else None
    if file_shape:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3 or min(img.GetSize()) < 2:
        raise InputError(path, f"not a 3D volume: size {img.GetSize()} (one 3D T2 image expected)")
    arr = sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0)  # (k,j,i) -> (i,j,k)
    scan = Scan(item, np.ascontiguousarray(arr), sitk_affine(img), extra={"sitk_geometry": sitk_geometry(img)}, file_shape=file_shape)
    if headers is not None:
        from plgg_fl.predict.dicom_series import check_stacking

        check_stacking(path, headers, scan.affine, scan.shape)
        scan.extra["dicom_headers"] = headers
    return scan


def sitk_affine(img) -> np.ndarray:
    """Voxel -> RAS (mm) affine of a SimpleITK image (SimpleITK itself works in LPS)."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ lps


def sitk_geometry(img) -> dict[str, tuple]:
    return {"size": tuple(img.GetSize()), "spacing": tuple(img.GetSpacing()), "origin": tuple(img.GetOrigin()),
            "direction": tuple(img.GetDirection())}


def read_brain_mask(path: Path, scan: Scan) -> np.ndarray:
    """A brain mask (> 0 = brain) that must lie on ``scan``'s grid (same shape and affine)."""
    if not path.is_file():
        raise InputError(path, f"brain mask for {scan.source.key} not found")
    m = read_scan(ScanInput(scan.source.key, path, _kind(path)))
    if m.shape != scan.shape or not np.allclose(m.affine, scan.affine, atol=1e-3):
        raise InputError(path, f"brain mask is not on the scan's grid (shape {m.shape} vs {scan.shape}, or affine differs)")
    return m.array > 0


# ----------------------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, save: Callable[[Path], None], overwrite: bool = False, check: Callable[[Path], None] | None = None) -> Path:
    """Write ``path`` via a hidden temp file in the same folder, check it, then move it into place.

    Without ``overwrite`` an existing ``path`` is never replaced (``FileExistsError``). On any
    failure (in ``save``, in ``check``, or a race) the temp file is removed: no half file remains.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), path.suffix)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(ext)]}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        save(tmp)
        if check is not None:
            check(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and fails if path appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it") from None
            except OSError:  # file system without hard links
                if path.exists():
                    raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it") from None
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_like(array: np.ndarray, scan: Scan, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``array`` (file voxel order, ``scan.shape``) as NIfTI on ``scan``'s exact grid, atomically.

    The file gets the input file's own shape (an (X, Y, Z, 1) input gets an (X, Y, Z, 1) output). NIfTI inputs: the
    input header is copied (qform/sform and their codes, units), only the data
    type changes. Other inputs: qform = sform = the scan's RAS affine. After writing, the file is
    read back and its shape, affine and orientation checked against the input (``check_grid``).
    """
    if tuple(array.shape) != scan.shape:
        raise ValueError(f"array shape {array.shape} != input shape {scan.shape}")
    dtype = np.uint8 if array.dtype in (np.bool_, np.uint8) else np.float32
    data = np.asarray(array, dtype=dtype).reshape(scan.file_shape or scan.shape)

    def save(tmp: Path) -> None:
        if isinstance(scan.header, nib.Nifti1Header):
            hdr = scan.header.copy()
            hdr.set_data_dtype(dtype)
            img = nib.Nifti1Image(data, scan.affine, header=hdr)
            img.set_qform(scan.header.get_qform(), code=int(scan.header["qform_code"]))
            img.set_sform(scan.header.get_sform(), code=int(scan.header["sform_code"]))
        else:
            img = nib.Nifti1Image(data, scan.affine)
            img.set_qform(scan.affine, code=1)
            img.set_sform(scan.affine, code=1)
        img.header.set_slope_inter(1.0, 0.0)
        with nibabel_notes(path):
            nib.save(img, str(tmp))

    def check(tmp: Path) -> None:
        with nibabel_notes(path):
            check_grid(tmp, scan)

    return atomic_write(path, save, overwrite=overwrite, check=check)


def check_grid(path: Path, scan: Scan) -> None:
    """Raise ``RuntimeError`` unless ``path`` has the input file's shape, ``scan``'s affine (1e-4 mm) and axis codes."""
    out = nib.load(str(path))
    problems = []
    if tuple(out.shape) != (scan.file_shape or scan.shape):
        problems.append(f"shape {out.shape} != {scan.file_shape or scan.shape}")
    if not np.allclose(out.affine, scan.affine, atol=1e-4):
        problems.append(f"affine differs:\n{out.affine}\nvs input\n{scan.affine}")
    if nib.aff2axcodes(out.affine) != nib.aff2axcodes(scan.affine):
        problems.append(f"orientation {nib.aff2axcodes(out.affine)} != {nib.aff2axcodes(scan.affine)}")
    geo = scan.extra.get("sitk_geometry")
    if geo is not None:  # DICOM & co: also compare what SimpleITK (hence Slicer/ITK-SNAP) sees
        import SimpleITK as sitk

        img = sitk.ReadImage(str(path))
        back = sitk_geometry(img[:, :, :, 0] if img.GetDimension() == 4 else img)
        for k in ("size", "spacing", "origin", "direction"):
            if not np.allclose(back[k], geo[k], atol=1e-4):
                problems.append(f"SimpleITK {k} {back[k]} != input {geo[k]}")
    if problems:
        raise RuntimeError(f"{path}: written file is not on the input grid: " + "; ".join(problems))
