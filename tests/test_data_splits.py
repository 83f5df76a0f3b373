"""Splits: seeded, stratified by tumour volume, exact totals; explicit split files."""

from collections import Counter

import numpy as np
import pytest

from plgg_fl.data.splits import load_split_file, make_splits, tumour_volume_ml, volume_bins


def _volumes(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return {f"case_{i:03d}": float(rng.gamma(2.0, 10.0)) for i in range(n)}


def test_same_seed_same_split_and_other_seed_differs():
    vols = _volumes()
    a = make_splits(vols, vols, seed=7, val_frac=0.2, test_frac=0.25)
    assert a == make_splits(vols, vols, seed=7, val_frac=0.2, test_frac=0.25)
    assert a != make_splits(vols, vols, seed=8, val_frac=0.2, test_frac=0.25)
    # key order of the input does not matter, only the keys and the seed
    rev = dict(reversed(list(vols.items())))
    assert make_splits(rev, rev, seed=7, val_frac=0.2, test_frac=0.25) == a


def test_totals_are_exact():
    vols = _volumes(37)
    counts = Counter(make_splits(vols, vols, seed=0, val_frac=0.2, test_frac=0.3).values())
    assert counts == {"train": 37 - 7 - 11, "val": 7, "test": 11}


def test_stratification_spreads_every_volume_bin_over_the_splits():
    vols = _volumes(40)
    bins = volume_bins(vols, n_bins=4)
    assert Counter(bins.values()) == {0: 10, 1: 10, 2: 10, 3: 10}
    for seed in range(5):
        split = make_splits(vols, vols, seed=seed, val_frac=0.2, test_frac=0.3)
        for b in range(4):
            in_bin = Counter(split[k] for k in vols if bins[k] == b)
            # 10 cases per bin: 2 val and 3 test expected, +-1
            assert abs(in_bin["val"] - 2) <= 1 and abs(in_bin["test"] - 3) <= 1, (seed, b, in_bin)
    # the smallest and the largest tumours both reach the held-out splits
    split = make_splits(vols, vols, seed=0, val_frac=0.2, test_frac=0.3)
    held_out = [vols[k] for k in vols if split[k] != "train"]
    assert min(held_out) < np.quantile(list(vols.values()), 0.25) < np.quantile(list(vols.values()), 0.75) < max(held_out)


def test_unlabelled_cases_go_to_test_and_no_volumes_means_plain_shuffle():
    vols = {"a": 1.0, "b": None, "c": 3.0, "d": None, "e": 2.0}
    split = make_splits(vols, vols, seed=0, val_frac=0.0, test_frac=0.0)
    assert split == {"a": "train", "b": "test", "c": "train", "d": "test", "e": "train"}
    keys = [f"k{i}" for i in range(10)]
    plain = make_splits(keys, None, seed=3, val_frac=0.3)
    assert Counter(plain.values()) == {"train": 7, "val": 3}


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="fractions"):
        make_splits(["a", "b"], None, val_frac=0.7, test_frac=0.5)


def test_tumour_volume_in_ml(tmp_path, data_write_nifti):
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[:5, :4, :2] = 2  # 40 voxels
    p = data_write_nifti(tmp_path / "m.nii.gz", mask, zooms=(2.0, 2.0, 2.5))  # 10 mm^3 per voxel
    assert tumour_volume_ml(p) == pytest.approx(0.4)


def test_split_file_yaml_and_json(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("train: [a, b]\nval: [c]\ntest: [d]\n", encoding="utf-8")
    assert load_split_file(y) == {"a": "train", "b": "train", "c": "val", "d": "test"}
    j = tmp_path / "s.json"
    j.write_text('{"train": ["a"], "test": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="'a' is listed in both"):
        load_split_file(j)
    j.write_text('{"training": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown split"):
        load_split_file(j)
