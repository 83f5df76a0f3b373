"""Synthetic cohort: determinism, real-world layouts, manifests, expert masks, tumour placement."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.data.manifest import load_manifest
from plgg_fl.synth import generate_cohort
from plgg_fl.synth.cohort import mean_pairwise_dice
from plgg_fl.synth.tumours import is_infratentorial, sample_adult, sample_plgg


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return generate_cohort(tmp_path_factory.mktemp("synth") / "a", seed=0, size="tiny", progress=False)


def test_same_seed_gives_identical_files_and_other_seed_differs(tiny, tmp_path):
    root = tiny["brats"].parent.parent
    again = generate_cohort(tmp_path / "b", seed=0, size="tiny", progress=False, workers=2)
    assert set(again) == {"brats", "cbtn", "dfci_bch"}
    ha, hb = _hashes(root), _hashes(tmp_path / "b")
    assert len(ha) > 40 and ha == hb  # gzip headers carry no timestamp; worker count does not matter
    other = _hashes(generate_cohort(tmp_path / "c", seed=1, size="tiny", sites=["cbtn"], progress=False)["cbtn"].parent)
    images = [k for k in other if "imagesTr" in k]
    assert images and all(other[k] != ha[f"cbtn/{k}"] for k in images)


def test_a_case_does_not_depend_on_which_other_sites_are_generated(tiny, tmp_path):
    alone = generate_cohort(tmp_path, seed=0, size="tiny", sites=["dfci_bch"], progress=False)
    assert list(alone) == ["dfci_bch"]
    full = _hashes(tiny["dfci_bch"].parent)
    assert _hashes(alone["dfci_bch"].parent) == full


def test_manifests_load_and_every_image_mask_pair_shares_grid(tiny):
    for site, path in tiny.items():
        man = load_manifest(path)
        assert man.site == site and man.spacing_mm is not None and len(man.cases) >= 4
        assert man.split("train") and man.split("val")
        for case in man.cases:
            img = nib.load(str(case.image))
            assert img.ndim == 3 and np.allclose(img.header.get_zooms(), man.spacing_mm)
            assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
            assert np.all(np.diag(img.affine)[:3] > 0)  # RAS
            data = np.asarray(img.dataobj)
            assert np.isfinite(data).all() and data.min() == 0 and data.max() > 0  # skull-stripped
            assert case.masks
            for mask_path in case.masks.values():
                mask = nib.load(str(mask_path))
                assert mask.shape == img.shape and np.allclose(mask.affine, img.affine)
                m = np.asarray(mask.dataobj)
                assert m.dtype == np.uint8 and set(np.unique(m)) <= set(man.label_values)
                assert (m > 0).any() and not (data[m > 0] == 0).any()  # tumour inside the brain


def test_brats_layout_and_labels(tiny):
    man = load_manifest(tiny["brats"])
    assert man.source == "brats2021" and tuple(man.label_values) == (0, 1, 2, 4)
    seen = set()
    for case in man.cases:
        assert case.key.startswith("BraTS2021_") and len(case.key) == len("BraTS2021_00000")
        assert case.image.name == f"{case.key}_t2.nii.gz" and case.image.parent.name == case.key
        assert case.primary_mask.name == f"{case.key}_seg.nii.gz"
        seen |= set(np.unique(_load(case.primary_mask)).tolist())
    assert seen == {0, 1, 2, 4}
    assert {c.split for c in man.cases} <= {"train", "val"}


def test_cbtn_is_nnunet_raw(tiny):
    man = load_manifest(tiny["cbtn"])
    ds_dir = tiny["cbtn"].parent / "Dataset501_CBTN"
    meta = json.loads((ds_dir / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "T2"} and meta["labels"] == {"background": 0, "tumor": 1}
    assert meta["file_ending"] == ".nii.gz"
    tr = sorted(p.name for p in (ds_dir / "imagesTr").iterdir())
    assert meta["numTraining"] == len(tr) == len(man.split("train")) + len(man.split("val"))
    assert all(n.endswith("_0000.nii.gz") for n in tr)
    for case in man.cases:
        sub = "Ts" if case.split == "test" else "Tr"
        assert case.image == ds_dir / f"images{sub}" / f"{case.key}_0000.nii.gz"
        assert case.primary_mask == ds_dir / f"labels{sub}" / f"{case.key}.nii.gz"
    assert man.split("test") and set(np.unique(_load(man.cases[0].primary_mask))) == {0, 1}


def test_dfci_bch_experts_disagree_like_raters(tiny, tmp_path):
    man = load_manifest(tiny["dfci_bch"])
    assert man.split("train") and man.split("test")
    for case in man.split("train") + man.split("val"):
        assert case.raters == ["ref"] and case.image.name == f"{case.key}_t2.nii.gz"
    # more test cases, at demo spacing, for a stable estimate of agreement
    man2 = load_manifest(generate_cohort(tmp_path, seed=0, spacing_mm=2.5, sites=["dfci_bch"], n_cases=12,
                                         progress=False, size="tiny")["dfci_bch"])
    info = json.loads((tmp_path / "dfci_bch" / "cohort.json").read_text(encoding="utf-8"))
    recorded = {r["key"]: r for r in info["cases"]}
    dices = []
    for case in man.split("test") + man2.split("test"):
        assert case.raters == ["expert1", "expert2", "expert3"]
        assert [p.name for p in case.masks.values()] == [f"{case.key}_seg_expert{i}.nii.gz" for i in (1, 2, 3)]
        masks = [_load(p) for p in case.masks.values()]
        d = mean_pairwise_dice(masks)
        assert 0.6 < d < 0.99, (case.key, d)  # never identical, never unrelated
        dices.append(d)
        if case.key in recorded and case.image.is_relative_to(tmp_path):
            assert recorded[case.key]["inter_rater_dice"] == pytest.approx(d, abs=1e-3)
    assert 0.7 < float(np.mean(dices)) < 0.95


def _mask_centre(case) -> tuple[np.ndarray, np.ndarray]:
    """Tumour centre of mass: (world mm, fraction of the brain's bounding box along x, y, z)."""
    img = nib.load(str(case.primary_mask))
    com = np.argwhere(np.asarray(img.dataobj) > 0).mean(0)
    brain = np.argwhere(_load(case.image) > 0)
    lo, hi = brain.min(0), brain.max(0)
    return (img.affine @ np.append(com, 1.0))[:3], (com - lo) / (hi - lo)


def test_pediatric_tumours_sit_in_posterior_fossa_adult_ones_supratentorially(tmp_path):
    """Centres of mass of the written masks, placed in MNI space by the recorded world->MNI similarity
    (what registration to the template would give) and, independently, relative to the brain's extent."""
    manifests = generate_cohort(tmp_path, seed=7, size="tiny", spacing_mm=5.0, n_cases=14, progress=False)
    rel_z = {"adult": [], "child": []}
    infra = {"adult": [], "child": []}
    for site, path in manifests.items():
        group = "adult" if site == "brats" else "child"
        rows = {r["key"]: r for r in json.loads((path.parent / "cohort.json").read_text(encoding="utf-8"))["cases"]}
        for case in load_manifest(path).cases:
            world, rel = _mask_centre(case)
            row = rows[case.key]
            mni = (np.asarray(row["world_to_mni"]) @ np.append(world, 1.0))[:3]
            assert np.linalg.norm(mni - row["centre_mni_mm"]) < 15.0, (case.key, mni, row)
            infra[group].append(is_infratentorial(mni))
            rel_z[group].append(rel[2])
    assert sum(infra["adult"]) == 0
    assert 0.55 <= np.mean(infra["child"]) <= 0.9
    # without the recorded transform: pediatric tumours lie low in the brain, adult ones high
    assert np.median(rel_z["child"]) < 0.35 < min(rel_z["adult"])


def test_location_model_proportions():
    rng = np.random.default_rng(0)
    child = [is_infratentorial(sample_plgg(rng).centre) for _ in range(600)]
    adult = [is_infratentorial(sample_adult(rng).centre) for _ in range(300)]
    assert 0.62 < np.mean(child) < 0.82 and not any(adult)


def test_cli_writes_cohort_and_preview(tmp_path):
    from plgg_fl.cli import main

    png = tmp_path / "sites.png"
    rc = main(["synth", str(tmp_path / "out"), "--size", "tiny", "--seed", "3", "--cases-per-site", "3",
               "--no-progress", "--preview", str(png)])
    assert rc == 0 and png.stat().st_size > 10_000
    for site in ("brats", "cbtn", "dfci_bch"):
        man = load_manifest(tmp_path / "out" / site / "manifest.yaml")
        assert len(man.cases) == 3
        assert json.loads((tmp_path / "out" / site / "cohort.json").read_text(encoding="utf-8"))["seed"] == 3


def test_generated_sites_pass_data_check(tiny, capsys):
    """`plgg-fl synth` then `plgg-fl data check` passes on every site, with no warning either."""
    from plgg_fl.cli import main
    from plgg_fl.data.validate import check_manifest

    for site, path in tiny.items():
        report = check_manifest(load_manifest(path), progress=False)
        assert not report.problems, [p.line() for p in report.problems]
        assert main(["data", "check", str(path), "--no-progress"]) == 0


def test_importers_recognise_the_synthetic_layouts(tiny, tmp_path):
    """The layouts are the real-world ones: the data-layer importers read them without hints."""
    from plgg_fl.data.importers import import_brats, import_nnunet, import_pairs

    brats = import_brats(tiny["brats"].parent, tmp_path / "b.yaml", progress=False)
    assert sorted(c.key for c in brats.cases) == sorted(c.key for c in load_manifest(tiny["brats"]).cases)
    cbtn = import_nnunet(tiny["cbtn"].parent / "Dataset501_CBTN", tmp_path / "c.yaml", progress=False)
    ours = load_manifest(tiny["cbtn"])
    assert {c.key for c in cbtn.split("test")} == {c.key for c in ours.split("test")}
    pairs = import_pairs(tiny["dfci_bch"].parent / "cases", tmp_path / "d.yaml",
                         mask_pattern=["{key}_seg.nii.gz", "{key}_seg_{rater}.nii.gz"], progress=False)
    raters = {c.key: c.raters for c in pairs.cases}
    for case in load_manifest(tiny["dfci_bch"]).cases:
        assert sorted(raters[case.key]) == sorted(case.raters)


@pytest.mark.parametrize("kwargs", [{"size": "huge"}, {"sites": ["mgh"]}, {"n_cases": 0}, {"spacing_mm": 0.1}])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_cohort(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_rerun_replaces_an_old_cohort_but_not_foreign_data(tmp_path):
    generate_cohort(tmp_path, size="tiny", sites=["cbtn"], n_cases=5, progress=False)
    generate_cohort(tmp_path, size="tiny", sites=["cbtn"], n_cases=3, progress=False)
    assert len(list((tmp_path / "cbtn" / "Dataset501_CBTN").rglob("*_0000.nii.gz"))) == 3  # no stale cases
    (tmp_path / "brats").mkdir()
    (tmp_path / "brats" / "patient.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate_cohort(tmp_path, size="tiny", sites=["brats"], progress=False)
    assert (tmp_path / "brats" / "patient.nii.gz").exists()


def test_cli_reports_bad_arguments_without_traceback(tmp_path, capsys):
    from plgg_fl.cli import main

    assert main(["synth", str(tmp_path), "--cases-per-site", "0", "--no-progress"]) == 2
    assert "n_cases" in capsys.readouterr().err
