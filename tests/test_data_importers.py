"""Importers on small fixture trees: BraTS 2021, nnU-Net raw, plain pairs with several raters."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from plgg_fl.data import BRATS_LABEL_VALUES, load_manifest
from plgg_fl.data.importers import DataImportError, import_brats, import_nnunet, import_pairs, is_t2


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file, to prove importers leave the source alone."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def brats_tree(tmp_path, data_write_nifti, data_case_arrays):
    src = tmp_path / "BraTS2021"
    for i in range(8):
        key = f"BraTS2021_{i:05d}"
        img, mask = data_case_arrays(seed=i, radius=2 + i % 4)
        seg = mask.copy()
        seg[mask > 0] = 2  # oedema shell, necrotic core, enhancing rim: labels {0,1,2,4}
        seg[5:7, 5:7, 5:7] = 1
        seg[7, 5:7, 5:7] = 4
        zooms = (1.0, 1.0, 1.0) if i != 3 else (1.0, 1.0, 3.0)
        data_write_nifti(src / key / f"{key}_t2.nii.gz", img, zooms)
        data_write_nifti(src / key / f"{key}_flair.nii.gz", img, zooms)
        if i != 7:  # last case: no segmentation (like the BraTS validation set)
            data_write_nifti(src / key / f"{key}_seg.nii.gz", seg, zooms, dtype=np.uint8)
    data_write_nifti(src / "BraTS2021_99999" / "BraTS2021_99999_flair.nii.gz", img)  # no T2 -> skipped
    return src


def test_brats_import(brats_tree, tmp_path, caplog):
    before = _tree_digest(brats_tree)
    out = tmp_path / "sites" / "brats" / "manifest.yaml"
    m = import_brats(brats_tree, out, seed=1, val_frac=0.25, progress=False)
    assert _tree_digest(brats_tree) == before
    assert m.source == "brats2021" and m.site == "brats"
    assert m.label_values == BRATS_LABEL_VALUES
    assert m.spacing_mm == (1.0, 1.0, 1.0)  # most common spacing, the 3 mm case is the odd one out
    keys = [c.key for c in m.cases]
    assert keys == [f"BraTS2021_{i:05d}" for i in range(8)]
    assert all(c.image.name.endswith("_t2.nii.gz") for c in m.cases)
    assert all(p.name.endswith("_seg.nii.gz") for c in m.cases for p in c.masks.values())
    unlabelled = [c for c in m.cases if c.key == "BraTS2021_00007"][0]
    assert unlabelled.split == "test" and unlabelled.masks == {}
    assert m.counts() == {"train": 5, "val": 2, "test": 1}  # round(7 * 0.25) = 2 val
    assert "BraTS2021_99999" in caplog.text and "no segmentation" in caplog.text
    assert "1 of 8 images have a spacing more than 10% from the most common (1.0, 1.0, 1.0) mm" in caplog.text
    # written relative to the manifest, reloadable, and the same split from the same seed
    loaded = load_manifest(out)
    assert [(c.key, c.split, c.image, c.masks) for c in loaded.cases] == [
        (c.key, c.split, c.image.resolve(), {r: p.resolve() for r, p in c.masks.items()}) for c in m.cases
    ]
    text = out.read_text(encoding="utf-8")
    assert "data_root: ../../BraTS2021\n" in text and "image: BraTS2021_00000/BraTS2021_00000_t2.nii.gz" in text
    again = import_brats(brats_tree, tmp_path / "again.json", seed=1, val_frac=0.25, progress=False)
    assert [c.split for c in again.cases] == [c.split for c in m.cases]


def _nnunet_tree(root, write, arrays, channel_names, labels, v1=False, n_tr=6, with_ts=True):
    root.mkdir(parents=True)
    meta = {"file_ending": ".nii.gz", "numTraining": n_tr}
    if v1:
        meta.update(modality=channel_names, labels=labels)
        meta.pop("file_ending")
    else:
        meta.update(channel_names=channel_names, labels=labels)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for i in range(n_tr):
        img, mask = arrays(seed=i, radius=1 + i % 5)
        for ch in range(len(channel_names)):
            write(root / "imagesTr" / f"cbtn_{i:03d}_{ch:04d}.nii.gz", img + ch)
        write(root / "labelsTr" / f"cbtn_{i:03d}.nii.gz", mask, dtype=np.uint8)
    if with_ts:
        for i in range(100, 102):
            img, mask = arrays(seed=i)
            for ch in range(len(channel_names)):
                write(root / "imagesTs" / f"cbtn_{i:03d}_{ch:04d}.nii.gz", img)
        write(root / "labelsTs" / "cbtn_100.nii.gz", mask, dtype=np.uint8)
    return root


def test_nnunet_import_picks_t2_channel_and_takes_test_from_imagesTs(tmp_path, data_write_nifti, data_case_arrays):
    src = _nnunet_tree(tmp_path / "Dataset501_CBTN", data_write_nifti, data_case_arrays,
                       {"0": "FLAIR", "1": "T2"}, {"background": 0, "tumour": 1})
    before = _tree_digest(src)
    m = import_nnunet(src, tmp_path / "m.yaml", val_frac=0.34, seed=0, progress=False)
    assert _tree_digest(src) == before
    assert m.site == "Dataset501_CBTN" and m.source == "nnunet_raw" and m.label_values == (0, 1)
    assert all(c.image.name.endswith("_0001.nii.gz") for c in m.cases)  # the T2 channel, not FLAIR
    test = {c.key: c for c in m.split("test")}
    assert set(test) == {"cbtn_100", "cbtn_101"}
    assert test["cbtn_100"].masks["ref"].parent.name == "labelsTs" and test["cbtn_101"].masks == {}
    assert Counter(c.split for c in m.cases if c.key not in test) == {"train": 4, "val": 2}
    assert all(c.masks["ref"] == src / "labelsTr" / f"{c.key}.nii.gz" for c in m.split("train"))


def test_nnunet_v1_dataset_json_and_channel_errors(tmp_path, data_write_nifti, data_case_arrays):
    v1 = _nnunet_tree(tmp_path / "Task01", data_write_nifti, data_case_arrays, {"0": "T2"},
                      {"0": "background", "1": "solid", "2": "cyst"}, v1=True, with_ts=False)
    m = import_nnunet(v1, tmp_path / "v1.yaml", site="cbtn", progress=False)
    assert m.label_values == (0, 1, 2) and m.site == "cbtn" and len(m.cases) == 6
    noT2 = _nnunet_tree(tmp_path / "NoT2", data_write_nifti, data_case_arrays, {"0": "T1", "1": "FLAIR"},
                        {"background": 0, "tumour": 1}, n_tr=2, with_ts=False)
    with pytest.raises(DataImportError, match="no T2 channel.*T1.*FLAIR"):
        import_nnunet(noT2, tmp_path / "x.yaml", progress=False)
    assert not (tmp_path / "x.yaml").exists()
    m = import_nnunet(noT2, tmp_path / "x.yaml", channel="FLAIR", val_frac=0, progress=False)  # explicit override
    assert all(c.image.name.endswith("_0001.nii.gz") for c in m.cases)
    (tmp_path / "Empty").mkdir()
    with pytest.raises(DataImportError, match="dataset.json"):
        import_nnunet(tmp_path / "Empty", tmp_path / "y.yaml")


@pytest.fixture
def pairs_tree(tmp_path, data_write_nifti, data_case_arrays):
    src = tmp_path / "dfci"
    for i in range(5):
        key = f"dfci_{i:02d}"
        img, mask = data_case_arrays(seed=i)
        data_write_nifti(src / "images" / f"{key}_t2.nii.gz", img)
        if i == 4:
            continue  # no reference at all
        for rater in ("expertA", "expertB", "expertC"):
            if i == 3 and rater == "expertC":
                continue  # one rater missed a case
            data_write_nifti(src / "masks" / f"{key}_seg_{rater}.nii.gz", mask, dtype=np.uint8)
    return src


def test_pairs_import_with_three_raters(pairs_tree, tmp_path, caplog):
    before = _tree_digest(pairs_tree)
    m = import_pairs(pairs_tree, tmp_path / "m.yaml", image_glob="images/*_t2.nii.gz",
                     mask_pattern="masks/{key}_seg_{rater}.nii.gz", raters=["expertB", "expertA", "expertC"],
                     val_frac=0.0, test_frac=1.0, progress=False)
    assert _tree_digest(pairs_tree) == before
    cases = {c.key: c for c in m.cases}
    assert set(cases) == {f"dfci_{i:02d}" for i in range(5)}
    assert cases["dfci_00"].raters == ["expertB", "expertA", "expertC"]  # given order; primary first
    assert cases["dfci_00"].primary_mask.name == "dfci_00_seg_expertB.nii.gz"
    assert cases["dfci_03"].raters == ["expertB", "expertA"] and "expertC" in caplog.text
    assert cases["dfci_04"].masks == {} and cases["dfci_04"].split == "test"
    assert m.source == "pairs" and m.site == "dfci" and all(c.split == "test" for c in m.cases)
    # without --raters: every rater found, sorted
    m2 = import_pairs(pairs_tree, tmp_path / "m2.yaml", image_glob="images/*_t2.nii.gz",
                      mask_pattern="masks/{key}_seg_{rater}.nii.gz", progress=False)
    assert {c.key: c for c in m2.cases}["dfci_00"].raters == ["expertA", "expertB", "expertC"]


def test_pairs_flat_folder_single_mask_and_split_file(tmp_path, data_write_nifti, data_case_arrays):
    src = tmp_path / "flat"
    for i in range(4):
        img, mask = data_case_arrays(seed=i)
        data_write_nifti(src / f"p{i}_t2.nii.gz", img)
        data_write_nifti(src / f"p{i}_seg.nii.gz", mask, dtype=np.uint8)
    splits = tmp_path / "splits.yaml"
    splits.write_text("train: [p0, p2]\nval: [p1]\n", encoding="utf-8")  # p3 not listed -> left out
    m = import_pairs(src, tmp_path / "m.yaml", splits=splits, progress=False)
    assert {c.key: c.split for c in m.cases} == {"p0": "train", "p1": "val", "p2": "train"}
    assert all(list(c.masks) == ["ref"] for c in m.cases)
    splits.write_text("train: [p0, p9]\n", encoding="utf-8")
    with pytest.raises(DataImportError, match="p9"):
        import_pairs(src, tmp_path / "m.yaml", splits=splits, progress=False)
    with pytest.raises(DataImportError, match=r"\{key\}"):
        import_pairs(src, tmp_path / "m.yaml", mask_pattern="seg.nii.gz")


def test_pairs_several_mask_patterns_mix_single_and_per_rater_masks(tmp_path, data_write_nifti, data_case_arrays):
    src = tmp_path / "ext"
    img, mask = data_case_arrays()
    data_write_nifti(src / "a_t2.nii.gz", img)
    data_write_nifti(src / "a_seg.nii.gz", mask, dtype=np.uint8)  # development-style single reference
    data_write_nifti(src / "b_t2.nii.gz", img)
    for r in ("expert2", "expert1"):
        data_write_nifti(src / f"b_seg_{r}.nii.gz", mask, dtype=np.uint8)
    m = import_pairs(src, tmp_path / "m.yaml", mask_pattern=["{key}_seg.nii.gz", "{key}_seg_{rater}.nii.gz"],
                     val_frac=0, progress=False)
    cases = {c.key: c for c in m.cases}
    assert set(cases) == {"a", "b"}  # mask files are never taken for images
    assert cases["a"].raters == ["ref"] and cases["b"].raters == ["expert1", "expert2"]


def test_t2_channel_names_leave_out_flair_and_t2star():
    from plgg_fl.data.importers import _nnunet_channel

    brats23 = {"channel_names": {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}}  # BraTS 2023: t2f is T2-FLAIR
    assert _nnunet_channel(brats23, None, Path("dataset.json")) == 2
    brats21 = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}}
    assert _nnunet_channel(brats21, None, Path("dataset.json")) == 2
    flair_only = {"channel_names": {"0": "t1n", "1": "t2f", "2": "T2star"}}
    with pytest.raises(DataImportError, match="no T2 channel"):
        _nnunet_channel(flair_only, None, Path("dataset.json"))


@pytest.mark.parametrize("name, t2", [
    ("T2", True), ("t2", True), ("t2w", True), ("T2w", True), ("T2-weighted", True), ("T2_TSE", True),
    ("FLAIR", False), ("Flair", False), ("T2-FLAIR", False), ("t2f", False), ("T2*", False), ("T2*w", False),
    ("t2star", False), ("T2 star", False), ("T1", False), ("t1c", False), ("T1ce", False), ("t1n", False),
])
def test_is_t2_the_one_channel_name_rule(name, t2):
    """The rule both nnU-Net importers use (plgg_fl.data.importers and the engine's import-nnunet)."""
    assert is_t2(name) is t2
