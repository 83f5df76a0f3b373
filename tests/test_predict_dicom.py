"""DICOM in, DICOM SEG out: series built from NIfTI volumes with pydicom, predicted with a tiny model,
the SEG read back (highdicom, pydicom) and compared voxel by voxel, by position, with the NIfTI mask
predict wrote on the source grid; series predict must refuse (missing slice, mixed orientations,
two series in one folder) fail with a message naming the problem."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.run import PredictOptions, predict_inputs
from test_predict_safety import _docs_error_rows

QUIET = dict(progress=False)
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
pytestmark = pytest.mark.usefixtures("predict_one_thread")


def write_mr_series(folder: Path, array_ijk: np.ndarray, affine_ras: np.ndarray, *, series_uid: str | None = None,
                    description: str = "T2 TSE", skip: tuple[int, ...] = (), study_uid: str | None = None,
                    frame_of_reference: bool = True) -> list:
    """Write ``array_ijk`` (voxel (i, j, k) -> ``affine_ras``, mm) as an int16 MR Image Storage series, one file per
    slice k (frame = ``array[:, :, k].T``: rows along j, columns along i), files named in a shuffled order.
    ``skip``: slices k left out; ``frame_of_reference=False``: no FrameOfReferenceUID. Returns the datasets written, by k."""
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
        if not frame_of_reference:
            del ds.FrameOfReferenceUID
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


def seg_on_nifti_grid(seg_ds, nifti: nib.Nifti1Image) -> np.ndarray:
    """The SEG's frames placed on ``nifti``'s voxels by position alone: every pixel's LPS point (frame's
    ImagePositionPatient, shared orientation and pixel spacing) mapped through the NIfTI affine. Each voxel must be
    hit exactly once at an integer index."""
    shared = seg_ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    d_row, d_col = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = seg_ds.pixel_array.reshape(-1, seg_ds.Rows, seg_ds.Columns)
    r, c = np.meshgrid(np.arange(seg_ds.Rows), np.arange(seg_ds.Columns), indexing="ij")
    to_vox = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti.affine)  # LPS -> voxel
    out = np.full(nifti.shape, -1, np.int16)
    for f, item in enumerate(seg_ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        pts = ipp + c[..., None] * d_col * iop[:3] + r[..., None] * d_row * iop[3:]
        vox = pts.reshape(-1, 3) @ to_vox[:3, :3].T + to_vox[:3, 3]
        idx = np.round(vox).astype(int)
        np.testing.assert_allclose(vox, idx, atol=1e-3)
        assert (out[tuple(idx.T)] == -1).all(), "two SEG pixels on one voxel"
        out[tuple(idx.T)] = frames[f].reshape(-1)
    assert (out >= 0).all(), "voxels the SEG does not cover"
    return out


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_seg_over_the_series_matches_the_nifti_mask_voxel_by_voxel(predict_ckpt, tmp_path, grid):
    import highdicom as hd
    import pydicom

    src = series_from_nifti(blob_nifti(tmp_path / "t2.nii.gz", GRIDS[grid], seed=31), tmp_path / "in" / "series")
    s = predict_inputs([tmp_path / "in" / "series"], predict_ckpt, tmp_path / "out", PredictOptions(**QUIET))
    assert s.exit_code == 0, s.text()
    (row,) = csv.DictReader(open(tmp_path / "out" / "volumes.csv", encoding="utf-8"))
    assert row["dicom_seg"] == str(tmp_path / "out" / "series_seg.dcm") and row["status"] == "ok"
    nifti = nib.load(str(tmp_path / "out" / "series_mask.nii.gz"))
    mask = np.asarray(nifti.dataobj)
    assert mask.sum() > 50 and all(not np.array_equal(mask, np.flip(mask, a)) for a in range(3))  # a flip would show
    assert not np.array_equal(mask.transpose(1, 0, 2)[:36, :36], mask[:36, :36])  # so would a transpose

    seg_ds = pydicom.dcmread(tmp_path / "out" / "series_seg.dcm")
    assert seg_ds.SOPClassUID == SEG_STORAGE and seg_ds.Modality == "SEG" and seg_ds.SegmentationType == "BINARY"
    assert seg_ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID and seg_ds.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg_ds.PatientID == src[0].PatientID and seg_ds.SeriesInstanceUID != src[0].SeriesInstanceUID
    (ref,) = seg_ds.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} == {d.SOPInstanceUID for d in src}
    (segment,) = seg_ds.SegmentSequence
    assert segment.SegmentLabel == "Whole tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    code = lambda seq: (seq[0].CodeValue, seq[0].CodingSchemeDesignator, seq[0].CodeMeaning)  # noqa: E731
    assert code(segment.SegmentedPropertyCategoryCodeSequence) == ("49755003", "SCT", "Morphologically Abnormal Structure")
    assert code(segment.SegmentedPropertyTypeCodeSequence) == ("108369006", "SCT", "Neoplasm")
    assert code(segment.AnatomicRegionSequence) == ("12738006", "SCT", "Brain")
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "plgg-fl" and "tiny" in algo.AlgorithmParameters

    # one frame per source slice, at that slice's position, referencing it
    by_uid = {d.SOPInstanceUID: d for d in src}
    assert seg_ds.NumberOfFrames == len(src)
    for item in seg_ds.PerFrameFunctionalGroupsSequence:
        source = by_uid[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient, atol=1e-4)
    np.testing.assert_allclose(seg_ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
                               src[0].ImageOrientationPatient, atol=1e-6)

    # voxel by voxel, by position (pydicom) and through highdicom's volume API
    np.testing.assert_array_equal(seg_on_nifti_grid(seg_ds, nifti), mask)
    seg = hd.seg.segread(tmp_path / "out" / "series_seg.dcm")
    vol = seg.get_volume(combine_segments=True)
    ref_vol = hd.Volume.from_nibabel(nifti)
    assert sorted(vol.spatial_shape) == sorted(ref_vol.spatial_shape)
    on_grid = vol.match_geometry(ref_vol)  # permutes/flips only: the shapes agree, so nothing is padded or cropped
    assert on_grid.geometry_equal(ref_vol)
    np.testing.assert_array_equal(on_grid.array, mask)


def test_empty_mask_still_gives_a_seg_with_every_frame(tmp_path):
    import highdicom as hd

    from plgg_fl.predict.dicom_seg import write_dicom_seg
    from plgg_fl.predict.io import discover_inputs, read_scan

    src = series_from_nifti(blob_nifti(tmp_path / "t2.nii.gz", GRIDS["coronal"], seed=32), tmp_path / "series")
    scan = read_scan(*discover_inputs(tmp_path / "series"))
    out = write_dicom_seg(np.zeros(scan.shape, np.uint8), scan, tmp_path / "out" / "x_seg.dcm", model_name="m.pt (tiny)")
    seg = hd.seg.segread(out)
    assert seg.NumberOfFrames == len(src) and seg.number_of_segments == 1
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src], segment_numbers=[1])
    assert pixels.shape == (len(src), src[0].Rows, src[0].Columns, 1) and not pixels.any()


def test_a_series_without_frame_of_reference_fails_before_segmenting_and_says_what_to_do(tmp_path):
    from plgg_fl.predict.dicom_seg import seg_source
    from plgg_fl.predict.io import InputError, discover_inputs, read_scan

    series_from_nifti(blob_nifti(tmp_path / "t2.nii.gz", GRIDS["coronal"], seed=35), tmp_path / "series", frame_of_reference=False)
    scan = read_scan(*discover_inputs(tmp_path / "series"))  # the NIfTI mask can still be made (--no-dicom-seg)
    with pytest.raises(InputError, match=r"series: the series has no FrameOfReferenceUID.*--no-dicom-seg"):
        seg_source(scan)


def test_seg_options_and_a_failed_seg_leaves_no_outputs(predict_ckpt, tmp_path, monkeypatch, capsys):
    from plgg_fl.cli import main
    from plgg_fl.predict import dicom_seg

    nifti = blob_nifti(tmp_path / "t2.nii.gz", GRIDS["coronal"], seed=33)
    series_from_nifti(nifti, tmp_path / "series")
    assert main(["predict", str(nifti), "--dicom-seg", "--model", str(predict_ckpt), "--out", str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "--dicom-seg: not a DICOM series" in capsys.readouterr().err and not (tmp_path / "o1" / "t2_mask.nii.gz").exists()

    s = predict_inputs([tmp_path / "series"], predict_ckpt, tmp_path / "o2", PredictOptions(dicom_seg=False, **QUIET))
    assert s.exit_code == 0 and s.results[0].dicom_seg is None
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["predict.log", "series_mask.nii.gz", "summary.json", "volumes.csv"]

    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "series_seg.dcm").write_bytes(b"earlier")  # the SEG is covered by the overwrite check
    s = predict_inputs([tmp_path / "series"], predict_ckpt, tmp_path / "o3", PredictOptions(**QUIET))
    assert s.exit_code == 1 and "series_seg.dcm: already exists" in s.failures[0].error
    assert (tmp_path / "o3" / "series_seg.dcm").read_bytes() == b"earlier" and not (tmp_path / "o3" / "series_mask.nii.gz").exists()

    def broken(path, mask, headers, name=None):
        raise RuntimeError("simulated bad SEG")

    monkeypatch.setattr(dicom_seg, "check_seg", broken)
    s = predict_inputs([tmp_path / "series"], predict_ckpt, tmp_path / "o4", PredictOptions(prob=True, **QUIET))
    assert s.exit_code == 1 and "simulated bad SEG" in s.failures[0].error
    assert sorted(p.name for p in (tmp_path / "o4").iterdir()) == ["predict.log", "summary.json", "volumes.csv"]  # no mask, prob, temp


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
    assert rows["good"].status == "ok" and (tmp_path / "out" / "good_seg.dcm").is_file()
    errors = {k: r.error for k, r in rows.items() if k != "good"}
    for key, err in errors.items():
        assert err.startswith(f"{root / key}: "), err
        assert not list((tmp_path / "out").glob(f"{key}_*")), key
    assert "slice spacing is not even" in errors["gap"] and "1 slice(s) missing" in errors["gap"] and "15 files" in errors["gap"]
    assert "mixed slice orientations" in errors["mixed"] and "16 file(s) coronal" in errors["mixed"] and "3 file(s) axial" in errors["mixed"]
    assert "2 DICOM series in one folder" in errors["two"] and "own folder" in errors["two"]
    for ds in (t2[0], flair[0]):
        assert f'{ds.SeriesInstanceUID} "{ds.SeriesDescription}" (16 files)' in errors["two"]
    docs = {"two": "DICOM: two or more series", "gap": "DICOM: a slice missing", "mixed": "DICOM: slices of another orientation"}
    for key, problem in docs.items():  # the docs' error table quotes these messages and says what to do
        row = next(r for r in _docs_error_rows() if r[0].startswith(problem))
        assert all(needle in errors[key] for needle in re.findall(r"`([^`]+)`", row[1])) and row[2], (row, errors[key])


def test_a_manifest_case_whose_image_is_a_dicom_folder_is_that_series_under_the_case_key(predict_ckpt, tmp_path):
    nifti = blob_nifti(tmp_path / "in" / "t2.nii.gz", GRIDS["coronal"], seed=35)
    series_from_nifti(nifti, tmp_path / "in" / "p1" / "series")  # the series one folder below the listed one
    (tmp_path / "in" / "p2").mkdir()  # listed, holds no series
    series_from_nifti(nifti, tmp_path / "in" / "p3" / "a")
    series_from_nifti(nifti, tmp_path / "in" / "p3" / "b")  # two series folders below: which one is meant?
    (tmp_path / "m.yaml").write_text(
        "site: s\ndata_root: in\ncases:\n  - {key: case1, split: test, image: p1}\n  - {key: case2, split: test, image: p2}\n"
        "  - {key: case3, split: test, image: p3}\n  - {key: case4, split: test, image: t2.nii.gz}\n", encoding="utf-8")
    s = predict_inputs([tmp_path / "m.yaml"], predict_ckpt, tmp_path / "out", PredictOptions(**QUIET))
    rows = {r.key: r for r in s.results}
    assert sorted(rows) == ["case1", "case2", "case3", "case4"] and s.exit_code == 1
    assert rows["case1"].status == "ok" and (tmp_path / "out" / "case1_seg.dcm").is_file()
    assert rows["case4"].status == "ok"
    assert "holding no DICOM series" in rows["case2"].error
    assert "2 DICOM series folders" in rows["case3"].error and "list the one series folder" in rows["case3"].error
    assert not list((tmp_path / "out").glob("case2*")) and not list((tmp_path / "out").glob("case3*"))
    # the series holds the NIfTI's voxels (rounded to int16): the same grid and the same mask but for rounding
    by_series = nib.load(str(tmp_path / "out" / "case1_mask.nii.gz"))
    by_file = nib.load(str(tmp_path / "out" / "case4_mask.nii.gz"))
    assert by_series.shape == by_file.shape and np.allclose(by_series.affine, by_file.affine, atol=1e-3)
    a, b = np.asarray(by_series.dataobj) > 0, np.asarray(by_file.dataobj) > 0
    assert b.sum() > 0 and 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
