"""plgg_fl.predict.io / prep without a model: discovery, readers, checks, atomic grid-checked writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.io import InputError, Scan, ScanInput, atomic_write, discover_inputs, read_scan, sitk_affine, write_like
from plgg_fl.predict.prep import brain_region, check_scan, n4_correct


def write_dicom_series(folder: Path, array_ijk: np.ndarray, spacing, direction, origin) -> Path:
    """Write an int16 MR DICOM series (one file per slice) with SimpleITK; array in (i, j, k) order."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)).astype(np.int16))
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    d = direction
    series = [
        ("0008|0060", "MR"),
        ("0008|103e", "T2 test"),
        ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.123456789"),
        ("0020|000d", "1.2.826.0.1.3680043.2.1125.1.987654321"),
        ("0020|0052", "1.2.826.0.1.3680043.2.1125.1.555555555"),  # FrameOfReferenceUID: an MR series has one (a SEG needs it)
        ("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
        ("0018|0050", str(spacing[2])),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        for tag, val in series:
            s.SetMetaData(tag, val)
        s.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.123456789.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    return folder


CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # columns: row dir, column dir, slice normal (right-handed)


def test_dicom_series_geometry_roundtrip(tmp_path):
    img, seg, _ = blob_volume((36, 30, 14), (0.8, 0.9, 2.5), seed=3)
    write_dicom_series(tmp_path / "dcm", img, (0.8, 0.9, 2.5), CORONAL, (-10.0, 20.0, 5.0))
    (item,) = discover_inputs(tmp_path / "dcm")
    assert item.kind == "dicom" and item.key == "dcm"
    scan = read_scan(item)
    assert scan.shape == img.shape
    np.testing.assert_allclose(scan.array, img.astype(np.int16), atol=0)
    np.testing.assert_allclose(scan.spacing_mm, (0.8, 0.9, 2.5), atol=1e-4)
    out = write_like(seg, scan, tmp_path / "out" / "m.nii.gz")  # raises if the grid check fails
    import SimpleITK as sitk

    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetDirection(), CORONAL, atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), (-10.0, 20.0, 5.0), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), seg)
    np.testing.assert_allclose(nib.load(str(out)).affine, sitk_affine(back), atol=1e-4)


def test_discover_folder_manifest_and_keys(tmp_path):
    img, _, aff = blob_volume((20, 20, 20), (2.0, 2.0, 2.0))
    for name in ("a_0000.nii.gz", "b.nii", ".hidden.nii.gz", "notes.txt"):
        (tmp_path / "in").mkdir(exist_ok=True)
        if name.endswith((".nii", ".nii.gz")):
            nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "in" / name))
        else:
            (tmp_path / "in" / name).write_text("x", encoding="utf-8")
    assert [i.key for i in discover_inputs(tmp_path / "in")] == ["a", "b"]
    (tmp_path / "m.yaml").write_text(
        "site: s\ndata_root: in\ncases:\n  - {key: k1, split: test, image: a_0000.nii.gz}\n  - {key: k2, split: test, image: b.nii}\n"
    , encoding="utf-8")
    assert [i.key for i in discover_inputs(tmp_path / "m.yaml")] == ["k1", "k2"]
    with pytest.raises(InputError, match="no such file"):
        discover_inputs(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI"):
        discover_inputs(tmp_path / "empty")


def _scan(tmp_path, name, data, affine=None):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(p))
    return read_scan(ScanInput(name, p, "nifti"))


def test_every_bad_input_has_its_message(tmp_path):
    img, seg, aff = blob_volume((30, 30, 30), (2.0, 2.0, 2.0))
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not an image" * 50)
    with pytest.raises(InputError, match=r"garbage\.nii\.gz: unreadable"):
        read_scan(ScanInput("g", tmp_path / "garbage.nii.gz", "nifti"))
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "full.nii.gz"))
    raw = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"trunc\.nii\.gz: unreadable: file is truncated"):
        read_scan(ScanInput("t", tmp_path / "trunc.nii.gz", "nifti"))
    with pytest.raises(InputError, match="not a 3D volume"):
        _scan(tmp_path, "four_d.nii.gz", np.stack([img, img], -1))
    with pytest.raises(InputError, match="not a 3D volume"):
        check_scan(_scan(tmp_path, "flat.nii.gz", img[:, :, :3]))
    with pytest.raises(InputError, match=r"zeros\.nii\.gz: empty image"):
        check_scan(_scan(tmp_path, "zeros.nii.gz", np.zeros_like(img)))
    with pytest.raises(InputError, match=r"label\.nii\.gz: looks like a label map"):
        check_scan(_scan(tmp_path, "label.nii.gz", seg))
    ct = np.where(img > 0, 35.0 + img / 10, -1000.0).astype(np.float32)  # HU: air -1000, brain ~40
    with pytest.raises(InputError, match=r"ct\.nii\.gz: implausible intensities for T2"):
        check_scan(_scan(tmp_path, "ct.nii.gz", ct))
    unstripped = _scan(tmp_path, "head.nii.gz", img + 5.0 + np.random.default_rng(0).random(img.shape).astype(np.float32))
    check_scan(unstripped)
    with pytest.raises(InputError, match=r"head\.nii\.gz: no brain region: .*not skull-stripped"):
        brain_region(unstripped)
    speck = np.zeros_like(img)
    speck[3:5, 3:5, 3:5] = np.arange(8).reshape(2, 2, 2) * 10.0 + 100  # non-zero, but no brain-sized region
    with pytest.raises(InputError, match="no brain region"):
        brain_region(_scan(tmp_path, "speck.nii.gz", speck))
    good = _scan(tmp_path, "good.nii.gz", img, aff)
    check_scan(good)
    assert brain_region(good).sum() == (img != 0).sum()
    with pytest.raises(InputError, match="no brain region"):
        brain_region(good, np.zeros(img.shape, bool))


def test_atomic_write_never_overwrites_and_leaves_no_half_file(tmp_path):
    target = tmp_path / "x.nii.gz"

    def half_then_fail(p: Path):
        with gzip.open(p, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda p: p.write_bytes(b"one"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        atomic_write(target, lambda p: p.write_bytes(b"two"))
    assert target.read_bytes() == b"one"
    atomic_write(target, lambda p: p.write_bytes(b"two"), overwrite=True)
    assert target.read_bytes() == b"two" and list(tmp_path.iterdir()) == [target]


def test_write_like_keeps_header_and_rejects_wrong_grid(tmp_path):
    img, seg, aff = blob_volume((24, 20, 12), (0.9, 1.1, 3.0), axcodes=("P", "S", "L"))
    p = tmp_path / "in.nii.gz"
    src = nib.Nifti1Image(img, aff)
    src.set_qform(aff, code=1)
    src.set_sform(aff, code=2)
    nib.save(src, str(p))
    scan = read_scan(ScanInput("in", p, "nifti"))
    out = nib.load(str(write_like(seg, scan, tmp_path / "o" / "in_mask.nii.gz")))
    assert out.shape == img.shape and nib.aff2axcodes(out.affine) == ("P", "S", "L")
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)
    assert int(out.header["sform_code"]) == 2 and out.get_data_dtype() == np.uint8
    with pytest.raises(ValueError, match="shape"):
        write_like(seg[:-1], scan, tmp_path / "o" / "bad.nii.gz")
    shifted = aff.copy()
    shifted[0, 3] += 1.0  # 1 mm off: the written file (affine ``aff``) must be refused for this scan
    liar = Scan(scan.source, scan.array, shifted)
    from plgg_fl.predict import io as pio

    with pytest.raises(RuntimeError, match="not on the input grid"):
        pio.atomic_write(tmp_path / "o" / "c.nii.gz", lambda q: nib.save(nib.Nifti1Image(seg, aff), str(q)), check=lambda q: pio.check_grid(q, liar))
    assert not (tmp_path / "o" / "c.nii.gz").exists() and len(list((tmp_path / "o").iterdir())) == 1


def test_n4_keeps_brain_and_flattens_a_bias_field(tmp_path):
    img, _, aff = blob_volume((32, 32, 32), (2.0, 2.0, 2.0), seed=1)
    brain = img > 0
    ramp = np.linspace(0.7, 1.3, img.shape[0], dtype=np.float32)[:, None, None]
    out = n4_correct(img * ramp, brain, (2.0, 2.0, 2.0), shrink=2, iterations=20)
    assert out.shape == img.shape and (out[~brain] == 0).all()
    left, right = out[: 12][brain[:12]].mean(), out[-12:][brain[-12:]].mean()
    b_left, b_right = (img * ramp)[:12][brain[:12]].mean(), (img * ramp)[-12:][brain[-12:]].mean()
    assert abs(np.log(right / left)) < abs(np.log(b_right / b_left))
