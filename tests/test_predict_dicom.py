"""DICOM series inputs, built from NIfTI volumes with pydicom and predicted with a tiny model: series
predict must refuse (missing slice, mixed orientations, two series in one folder) fail with a message
naming the problem, and the others are still segmented."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.predict.run import PredictOptions, predict_inputs
from plgg_fl.predict.toy import blob_volume

QUIET = dict(progress=False)
pytestmark = pytest.mark.usefixtures("predict_one_thread")


def write_mr_series(folder: Path, array_ijk: np.ndarray, affine_ras: np.ndarray, *, series_uid: str | None = None,
                    description: str = "T2 TSE", skip: tuple[int, ...] = (), study_uid: str | None = None) -> list:
    """Write ``array_ijk`` (voxel (i, j, k) -> ``affine_ras``, mm) as an int16 MR Image Storage series, one file per
    slice k (frame = ``array[:, :, k].T``: rows along j, columns along i), files named in a shuffled order.
    ``skip``: slices k left out. Returns the datasets written, by k."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    iop = [*(lps[:3, 0] / sp[0]), *(lps[:3, 1] / sp[1])]
    series_uid, study_uid, for_uid = series_uid or generate_uid(), study_uid or generate_uid(), generate_uid()
    ks = [k for k in range(array_ijk.shape[2]) if k not in skip]
    names = np.random.default_rng(len(ks)).permutation(len(ks))  # file name order != slice order
    written = []
    for k, n in zip(ks, names):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "MR", "TestScanner", description
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Child", "PLGG-0001", "20150101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 7, int(n) + 1
        ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, :3] @ (0, 0, k) + lps[:3, 3]]
        ds.PixelSpacing = [float(sp[1]), float(sp[0])]  # (between rows = along j, between columns = along i)
        ds.SliceThickness = float(sp[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array_ijk.shape[1], array_ijk.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(np.round(array_ijk[:, :, k]).T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
        written.append(ds)
    return written


def series_from_nifti(nifti: Path, folder: Path, **kw) -> list:
    """A DICOM series with the NIfTI's voxels on the NIfTI's grid (:func:`write_mr_series`)."""
    img = nib.load(str(nifti))
    return write_mr_series(folder, np.asarray(img.dataobj), img.affine, **kw)


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    i, j = [n for n in range(3) if n != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


#: voxel axes -> RAS: oblique (20 deg about R, 12 deg about S) with a left-handed grid (k runs against the slice
#: normal, so GDCM stacks the slices in the reverse of the NIfTI's k order); and coronal
GRIDS = {
    "oblique": rotation(2, 12) @ rotation(0, 20) @ np.diag([1.0, 1.0, -1.0]),
    "coronal": np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]),
}


def blob_nifti(path: Path, grid: np.ndarray, seed: int) -> Path:
    """A 40x36x16 blob "T2" (0.9 x 1.0 x 2.5 mm) on ``grid`` (3x3 directions), saved as NIfTI."""
    img, _, _ = blob_volume((40, 36, 16), (0.9, 1.0, 2.5), seed=seed, tumour_radius_mm=9)
    aff = np.eye(4)
    aff[:3, :3] = grid @ np.diag([0.9, 1.0, 2.5])
    aff[:3, 3] = (-15.0, 22.0, -40.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, aff), str(path))
    return path


def test_series_that_would_be_misread_fail_each_with_their_problem(predict_ckpt, tmp_path):
    nifti = blob_nifti(tmp_path / "t2.nii.gz", GRIDS["coronal"], seed=34)
    root = tmp_path / "dicom"
    series_from_nifti(nifti, root / "good")
    series_from_nifti(nifti, root / "gap", skip=(7,))
    uid = "1.2.826.0.1.3680043.8.498.1111"
    series_from_nifti(nifti, root / "mixed", series_uid=uid)
    img = nib.load(str(nifti))
    axial = np.diag([0.9, 1.0, 2.5, 1.0])  # a localiser-like axial stack inside the same series
    write_mr_series(tmp_path / "loc", np.asarray(img.dataobj)[:, :, :3], axial, series_uid=uid)
    for f in (tmp_path / "loc").iterdir():
        shutil.move(f, root / "mixed" / f"loc_{f.name}")
    t2 = series_from_nifti(nifti, root / "two", description="T2 TSE")
    flair = write_mr_series(tmp_path / "flair", np.asarray(img.dataobj), img.affine, description="FLAIR", study_uid=t2[0].StudyInstanceUID)
    for f in (tmp_path / "flair").iterdir():
        shutil.move(f, root / "two" / f"flair_{f.name}")

    s = predict_inputs([root], predict_ckpt, tmp_path / "out", PredictOptions(**QUIET))
    rows = {r.key: r for r in s.results}
    assert sorted(rows) == ["gap", "good", "mixed", "two"] and s.exit_code == 1
    assert rows["good"].status == "ok"
    errors = {k: r.error for k, r in rows.items() if k != "good"}
    for key, err in errors.items():
        assert err.startswith(f"{root / key}: "), err
        assert not list((tmp_path / "out").glob(f"{key}_*")), key
    assert "slice spacing is not even" in errors["gap"] and "1 slice(s) missing" in errors["gap"] and "15 files" in errors["gap"]
    assert "mixed slice orientations" in errors["mixed"] and "16 file(s) coronal" in errors["mixed"] and "3 file(s) axial" in errors["mixed"]
    assert "2 DICOM series in one folder" in errors["two"] and "own folder" in errors["two"]
    for ds in (t2[0], flair[0]):
        assert f'{ds.SeriesInstanceUID} "{ds.SeriesDescription}" (16 files)' in errors["two"]
