"""Validation: every problem triggered by a crafted bad case, reported with its case key and reason."""

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from plgg_fl.data import Case, Manifest, write_manifest, load_manifest
from plgg_fl.data import validate
from plgg_fl.data.validate import check_manifest, usable_cases

#: key -> (expected problem codes, expected severity) for each crafted case
EXPECTED = {
    "missing": ({"missing_file"}, "error"),
    "truncated_gz": ({"corrupt"}, "error"),
    "not_gzip": ({"corrupt"}, "error"),
    "truncated_nii": ({"corrupt"}, "error"),
    "not_nifti": ({"unreadable"}, "error"),
    "four_d": ({"not_3d"}, "error"),
    "shape": ({"shape_mismatch"}, "error"),
    "affine": ({"affine_mismatch"}, "error"),
    "labels": ({"label_values"}, "error"),
    "nan": ({"nonfinite"}, "error"),
    "inf": ({"nonfinite"}, "error"),
    "zeros": ({"all_zero"}, "error"),
    "spacing": ({"spacing"}, "error"),
    "dup": ({"duplicate_key"}, "error"),
    "leak": ({"split_overlap"}, "error"),
    "same_img_a": ({"split_overlap"}, "error"),
    "same_img_b": ({"split_overlap"}, "error"),
    "mask_missing": ({"missing_file"}, "error"),
    "empty": ({"empty_mask"}, "warning"),
    "singleton4d": ({"squeezed_4d"}, "warning"),
}
GOOD = ["good_0", "good_1", "good_2", "tiny_affine_diff", "empty_test", "unlabelled_test"]


@pytest.fixture
def bad_site(tmp_path, data_write_nifti, data_case_arrays):
    """A site whose cases each carry exactly one problem (or none, for the GOOD ones)."""
    root = tmp_path / "site"
    w = data_write_nifti
    cases = []

    def add(key, split="train", img=None, mask=None, img_file=None, mask_file=None, masks=None):
        img_arr, mask_arr = data_case_arrays(seed=len(cases))
        ip = img_file or w(root / "images" / f"{key}.nii.gz", img_arr if img is None else img)
        if masks is None:
            mp = mask_file or w(root / "masks" / f"{key}.nii.gz", mask_arr if mask is None else mask, dtype=np.uint8)
            masks = {"ref": mp}
        cases.append(Case(key, split, Path(ip), masks))

    for i in range(3):
        add(f"good_{i}")
    img, mask = data_case_arrays()
    add("missing", img_file=root / "images" / "missing.nii.gz")
    good_gz = (root / "images" / "good_0.nii.gz").read_bytes()
    (root / "images" / "truncated_gz.nii.gz").write_bytes(good_gz[: len(good_gz) // 2])
    add("truncated_gz", img_file=root / "images" / "truncated_gz.nii.gz")
    (root / "images" / "not_gzip.nii.gz").write_bytes(b"this is not gzip" * 50)
    add("not_gzip", img_file=root / "images" / "not_gzip.nii.gz")
    raw = gzip.decompress(good_gz)
    (root / "images" / "truncated_nii.nii").write_bytes(raw[: len(raw) - 1000])
    add("truncated_nii", img_file=root / "images" / "truncated_nii.nii")
    (root / "images" / "not_nifti.nii.gz").write_bytes(gzip.compress(b"\x00\x01garbage" * 100))
    add("not_nifti", img_file=root / "images" / "not_nifti.nii.gz")
    add("four_d", img=np.stack([img, img], axis=-1))
    add("shape", mask=mask[:, :, :10])
    shifted = np.eye(4)
    shifted[:3, 3] = 2.0  # 2 mm shift
    add("affine", mask_file=w(root / "masks" / "affine.nii.gz", mask, affine=shifted, dtype=np.uint8))
    tiny = np.eye(4)
    tiny[0, 3] = 1e-5  # rounding noise from a converter: within tolerance
    add("tiny_affine_diff", mask_file=w(root / "masks" / "tiny.nii.gz", mask, affine=tiny, dtype=np.uint8))
    add("labels", mask=mask * 3)
    nan = img.copy()
    nan[0, 0, 0] = np.nan
    add("nan", img=nan)
    inf = img.copy()
    inf[1, 1, 1] = np.inf
    add("inf", img=inf)
    add("zeros", img=np.zeros_like(img))
    add("spacing", img_file=w(root / "images" / "spacing.nii.gz", img, zooms=(1.0, 1.0, 1.5)),
        mask_file=w(root / "masks" / "spacing.nii.gz", mask, zooms=(1.0, 1.0, 1.5), dtype=np.uint8))
    add("dup")
    add("dup")
    add("leak", split="train")
    add("leak", split="test")
    shared = w(root / "images" / "shared.nii.gz", img)  # one scan under two keys in two splits: a leak
    add("same_img_a", split="train", img_file=shared)
    add("same_img_b", split="test", img_file=shared)
    add("mask_missing", mask_file=root / "masks" / "nowhere.nii.gz")
    add("empty", mask=np.zeros_like(mask))
    add("empty_test", split="test", mask=np.zeros_like(mask))
    add("unlabelled_test", split="test", masks={})
    add("singleton4d", img=img[..., None], mask=mask[..., None])
    m = Manifest(site="bad", root=root, cases=cases, spacing_mm=(1.0, 1.0, 1.0), label_values=(0, 1))
    return write_manifest(m, tmp_path / "manifest.yaml")


def _digest(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_every_problem_is_reported_with_case_and_reason(bad_site):
    m = load_manifest(bad_site)
    before = _digest(m.root)
    report = check_manifest(m, progress=False)
    assert _digest(m.root) == before  # source files never modified
    for key, (codes, severity) in EXPECTED.items():
        found = report.for_case(key)
        assert {p.code for p in found} == codes, (key, [p.line() for p in found])
        assert all(p.severity == severity and p.message for p in found), key
    for key in GOOD:
        assert report.for_case(key) == [], [p.line() for p in report.for_case(key)]
    assert report.unusable_keys() == {k for k, (_, sev) in EXPECTED.items() if sev == "error"}


def test_problem_messages_name_the_file_and_the_reason(bad_site):
    report = check_manifest(load_manifest(bad_site), progress=False)
    lines = {p.case: p.line() for p in report.problems}
    assert lines["truncated_gz"].startswith("ERROR truncated_gz images/truncated_gz.nii.gz: truncated or corrupt gzip (")
    assert "\n" not in lines["truncated_nii"] and "truncated or corrupt image data" in lines["truncated_nii"]
    assert lines["missing"] == "ERROR missing images/missing.nii.gz: file not found"
    assert lines["mask_missing"] == "ERROR mask_missing masks/nowhere.nii.gz: file not found"
    assert "not 3D: shape (12, 12, 12, 2)" in lines["four_d"]
    assert "mask shape (12, 12, 10) != image shape (12, 12, 12)" in lines["shape"]
    assert "max |diff| 2 mm" in lines["affine"]
    assert "mask values 3 outside allowed [0, 1]" in lines["labels"]
    assert "1 NaN/inf" in lines["nan"] and "1 NaN/inf" in lines["inf"]
    assert "spacing 1 x 1 x 1.5 mm is far from the manifest's 1 x 1 x 1 mm" in lines["spacing"]
    assert "several splits: test, train" in lines["leak"]
    assert "same_img_b (test)" in lines["same_img_a"]
    assert lines["empty"].startswith("WARNING empty masks/empty.nii.gz: empty reference mask")


def test_spacing_tolerance_is_a_parameter(bad_site):
    report = check_manifest(load_manifest(bad_site), spacing_tolerance=0.6, progress=False)
    assert report.for_case("spacing") == []


def test_no_mask_in_a_train_case_built_in_code(tmp_path, data_write_nifti, data_case_arrays):
    img, _ = data_case_arrays()
    p = data_write_nifti(tmp_path / "a.nii.gz", img)
    m = Manifest(site="s", root=tmp_path, cases=[Case("a", "train", p, {})])
    (problem,) = check_manifest(m, progress=False).problems
    assert (problem.case, problem.code, problem.severity) == ("a", "no_mask", "error")


def test_usable_cases_leaves_bad_ones_out_and_logs_why(bad_site, caplog):
    m = load_manifest(bad_site)
    with caplog.at_level(logging.WARNING, logger="plgg_fl.data"):
        train = usable_cases(m, "train")
    keys = [c.key for c in train]
    assert keys == ["good_0", "good_1", "good_2", "tiny_affine_diff", "empty", "singleton4d"]
    assert "leaving out train case truncated_gz: images/truncated_gz.nii.gz: truncated or corrupt gzip" in caplog.text
    assert "leaving out train case leak" in caplog.text
    test = usable_cases(m, "test")
    assert [c.key for c in test] == ["empty_test", "unlabelled_test"]  # leak and same_img_b are out
    report = check_manifest(m, splits=["test"], progress=False)
    assert [c.key for c in usable_cases(m, "test", report)] == ["empty_test", "unlabelled_test"]
    with pytest.raises(ValueError, match="did not read split 'train'"):
        usable_cases(m, "train", report)


def test_each_file_is_read_once_per_call(bad_site, monkeypatch):
    calls = []
    real = validate._read
    monkeypatch.setattr(validate, "_read", lambda path, role: calls.append((Path(path).resolve(), role)) or real(path, role))
    m = load_manifest(bad_site)
    check_manifest(m, progress=False)
    assert len(calls) == len(set(calls))
    shared = (m.root / "images" / "shared.nii.gz").resolve()
    assert calls.count((shared, "image")) == 1  # used by two cases, read once


def test_usable_cases_counts_what_it_leaves_out_by_reason_without_case_keys(bad_site):
    m = load_manifest(bad_site)
    excluded: dict[str, int] = {}
    kept = usable_cases(m, "train", excluded=excluded)
    report = check_manifest(m, splits=["train"], progress=False)
    left_out = [c for c in m.split("train") if c.key in {p.case for p in report.errors}]  # entries (a key may repeat)
    assert excluded["cases"] == len(m.split("train")) - len(kept) == len(left_out)
    for code, n in excluded.items():
        if code != "cases":
            assert n == sum(c.key in {p.case for p in report.errors if p.code == code} for c in left_out), code
    assert set(excluded) == {"cases"} | {p.code for p in report.errors}  # counts by reason only, never a case key


def test_a_site_whose_every_training_case_is_bad_fails_naming_the_counts(bad_site):
    import dataclasses

    from plgg_fl.fl.client import site_cases

    m = load_manifest(bad_site)
    bad = {p.case for p in check_manifest(m, splits=["train"], progress=False).errors}
    only_bad = dataclasses.replace(m, cases=[c for c in m.cases if c.key in bad])
    metrics: dict[str, float] = {}
    with pytest.raises(RuntimeError, match=rf"no usable train case: {len(bad)} listed, all left out \(.*corrupt.*\); `plgg-fl data check`"):
        site_cases(only_bad, "train", metrics, "train/", required=True)
    assert metrics["train/excluded/cases"] == len(bad)
