"""End-to-end ``plgg-fl predict`` / ``export`` with a tiny model trained for a few dozen steps on blobs."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.run import PredictOptions, predict_inputs

QUIET = dict(progress=False)


pytestmark = pytest.mark.usefixtures("predict_one_thread")


@pytest.fixture(scope="module")
def ckpt(predict_ckpt):
    return predict_ckpt


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def save(path, img, aff):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, aff), str(path))
    return path


def test_non_ras_anisotropic_input_gets_mask_on_its_exact_grid(ckpt, tmp_path):
    img, seg, aff = blob_volume((48, 40, 16), (0.9, 1.1, 3.0), seed=11, tumour_radius_mm=9, axcodes=("P", "S", "L"))
    save(tmp_path / "in" / "psl.nii.gz", img, aff)
    s = predict_inputs([tmp_path / "in" / "psl.nii.gz"], ckpt, tmp_path / "out", PredictOptions(prob=True, **QUIET))
    assert s.exit_code == 0, s.text()
    m = nib.load(str(tmp_path / "out" / "psl_mask.nii.gz"))
    assert m.shape == img.shape and nib.aff2axcodes(m.affine) == ("P", "S", "L")
    np.testing.assert_allclose(m.affine, aff, atol=1e-5)
    mask = np.asarray(m.dataobj)
    assert set(np.unique(mask)) <= {0, 1} and dice(mask, seg) > 0.5
    prob = np.asarray(nib.load(str(tmp_path / "out" / "psl_prob.nii.gz")).dataobj)
    assert prob.shape == img.shape and 0 <= prob.min() and prob.max() <= 1
    (row,) = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv", encoding="utf-8")))
    assert row["status"] == "ok"
    assert float(row["volume_ml"]) == pytest.approx(mask.sum() * 0.9 * 1.1 * 3.0 / 1000, rel=1e-3)


def test_bad_inputs_fail_one_by_one_and_good_ones_succeed(ckpt, tmp_path):
    from plgg_fl.cli import main

    d = tmp_path / "in"
    img, seg, aff = blob_volume((40, 40, 40), (1.5, 1.5, 1.5), seed=21, tumour_radius_mm=9)
    save(d / "good1.nii.gz", img, aff)
    save(d / "good2.nii.gz", *blob_volume((40, 40, 40), (1.5, 1.5, 1.5), seed=22, tumour_radius_mm=9)[::2])
    (d / "garbage.nii.gz").write_bytes(b"\x00not an image" * 40)
    raw = (d / "good1.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    save(d / "fourd.nii.gz", np.stack([img, img], -1), aff)
    save(d / "zeros.nii.gz", np.zeros_like(img), aff)
    save(d / "headnotstripped.nii.gz", img + 20 + np.random.default_rng(0).random(img.shape, dtype=np.float32), aff)
    save(d / "ct.nii.gz", np.where(img > 0, 40 + img / 20, -1024.0).astype(np.float32), aff)
    save(d / "labelmap.nii.gz", seg, aff)
    expected = {
        "garbage": "unreadable",
        "truncated": "truncated",
        "fourd": "not a 3D volume",
        "zeros": "empty image",
        "headnotstripped": "not skull-stripped",
        "ct": "implausible intensities for T2",
        "labelmap": "looks like a label map",
    }
    rc = main(["predict", str(d), "--model", str(ckpt), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    rows = {r["key"]: r for r in csv.DictReader(open(tmp_path / "out" / "volumes.csv", encoding="utf-8"))}
    assert rows["good1"]["status"] == rows["good2"]["status"] == "ok"
    assert (tmp_path / "out" / "good1_mask.nii.gz").is_file() and (tmp_path / "out" / "good2_mask.nii.gz").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    errors = {f["key"]: f["error"] for f in summary["failures"]}
    assert set(errors) == set(expected)
    for key, problem in expected.items():
        assert f"{key}.nii.gz" in errors[key] and problem in errors[key], errors[key]
        assert not (tmp_path / "out" / f"{key}_mask.nii.gz").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files


def test_brain_mask_makes_an_unstripped_scan_usable(ckpt, tmp_path):
    img, seg, aff = blob_volume((40, 40, 40), (1.5, 1.5, 1.5), seed=23, tumour_radius_mm=9)
    head = img + 30 + np.random.default_rng(1).random(img.shape, dtype=np.float32) * 5
    save(tmp_path / "head.nii.gz", head, aff)
    save(tmp_path / "brain.nii.gz", (img > 0).astype(np.uint8), aff)
    opts = PredictOptions(brain_masks=str(tmp_path / "brain.nii.gz"), **QUIET)
    s = predict_inputs([tmp_path / "head.nii.gz"], ckpt, tmp_path / "out", opts)
    assert s.exit_code == 0, s.text()
    assert dice(nib.load(str(tmp_path / "out" / "head_mask.nii.gz")).dataobj, seg) > 0.5


def test_dicom_series_end_to_end(ckpt, tmp_path):
    import SimpleITK as sitk
    from test_predict_io import CORONAL, write_dicom_series

    img, seg, _ = blob_volume((44, 40, 18), (0.9, 1.0, 2.5), seed=24, tumour_radius_mm=9)
    write_dicom_series(tmp_path / "series", img, (0.9, 1.0, 2.5), CORONAL, (-20.0, 15.0, -30.0))
    s = predict_inputs([tmp_path / "series"], ckpt, tmp_path / "out", PredictOptions(**QUIET))
    assert s.exit_code == 0, s.text()
    m = sitk.ReadImage(str(tmp_path / "out" / "series_mask.nii.gz"))
    assert m.GetSize() == img.shape
    np.testing.assert_allclose(m.GetDirection(), CORONAL, atol=1e-5)
    np.testing.assert_allclose(m.GetOrigin(), (-20.0, 15.0, -30.0), atol=1e-4)
    np.testing.assert_allclose(m.GetSpacing(), (0.9, 1.0, 2.5), atol=1e-5)
    assert dice(sitk.GetArrayFromImage(m).transpose(2, 1, 0), seg) > 0.5


def test_no_overwrite_without_flag_and_no_half_file(ckpt, tmp_path, monkeypatch):
    img, _, aff = blob_volume((40, 40, 40), (1.5, 1.5, 1.5), seed=25, tumour_radius_mm=9)
    src, out = save(tmp_path / "a.nii.gz", img, aff), tmp_path / "out"
    assert predict_inputs([src], ckpt, out, PredictOptions(**QUIET)).exit_code == 0
    before = (out / "a_mask.nii.gz").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):  # the run's reports exist
        predict_inputs([src], ckpt, out, PredictOptions(**QUIET))
    (out / "volumes.csv").unlink()
    (out / "summary.json").unlink()
    s = predict_inputs([src], ckpt, out, PredictOptions(**QUIET))  # the mask exists: that input fails
    assert s.exit_code == 1 and "a_mask.nii.gz: already exists" in s.failures[0].error
    assert (out / "a_mask.nii.gz").read_bytes() == before
    assert predict_inputs([src], ckpt, out, PredictOptions(overwrite=True, **QUIET)).exit_code == 0

    import plgg_fl.predict.io as pio

    def broken_check(path, scan):
        raise RuntimeError("simulated failure after the file was written")

    monkeypatch.setattr(pio, "check_grid", broken_check)
    out2 = tmp_path / "out2"
    s = predict_inputs([src], ckpt, out2, PredictOptions(**QUIET))
    assert s.exit_code == 1 and "simulated failure" in s.failures[0].error
    assert sorted(p.name for p in out2.iterdir()) == ["predict.log", "summary.json", "volumes.csv"]


def test_export_gives_the_same_mask_as_its_checkpoint(ckpt, tmp_path):
    import torch

    from plgg_fl.cli import main

    assert main(["export", str(ckpt), str(tmp_path / "exp")]) == 0
    card = json.loads((tmp_path / "exp" / "model_card.json").read_text(encoding="utf-8"))
    assert card["model"]["preset"] == "tiny" and card["input"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert "z-score" in card["input"]["normalisation"] and card["training"]["stage"] == "toy"
    assert card["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    program = torch.export.load(str(tmp_path / "exp" / "model.pt2")).module()  # usable without plgg-fl
    window = tuple(card["input"]["window_voxels"])
    assert program(torch.zeros(3, 1, *window)).shape == (3, 2, *window)
    img, _, aff = blob_volume((48, 40, 16), (0.9, 1.1, 3.0), seed=26, tumour_radius_mm=9, axcodes=("L", "I", "A"))
    src = save(tmp_path / "x.nii.gz", img, aff)
    a = predict_inputs([src], ckpt, tmp_path / "o1", PredictOptions(**QUIET))
    b = predict_inputs([src], tmp_path / "exp", tmp_path / "o2", PredictOptions(**QUIET))
    assert a.exit_code == b.exit_code == 0
    ma = np.asarray(nib.load(str(tmp_path / "o1" / "x_mask.nii.gz")).dataobj)
    mb = np.asarray(nib.load(str(tmp_path / "o2" / "x_mask.nii.gz")).dataobj)
    assert ma.sum() > 0
    np.testing.assert_array_equal(ma, mb)


def test_speed_options_keep_the_engine_answer(ckpt, tmp_path):
    """Brain-box crop, bf16, batched windows and the hot-box inverse vs the engine's plain path (whole input,
    fp32, 1 window, full inversion)."""
    img, _, aff = blob_volume((60, 52, 20), (1.0, 1.2, 2.5), seed=27, tumour_radius_mm=9, axcodes=("L", "P", "S"))
    src = save(tmp_path / "s.nii.gz", img, aff)
    plain = PredictOptions(crop=False, precision="fp32", sw_batch_size=1, hot_box=False, **QUIET)
    fast = PredictOptions(crop=True, precision="bf16", sw_batch_size=4, **QUIET)
    masks = []
    for name, opts in (("plain", plain), ("fast", fast)):
        assert predict_inputs([src], ckpt, tmp_path / name, opts).exit_code == 0
        masks.append(np.asarray(nib.load(str(tmp_path / name / "s_mask.nii.gz")).dataobj))
    assert masks[0].sum() > 0 and dice(*masks) >= 0.99
