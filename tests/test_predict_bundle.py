"""``plgg-fl export --format monai-bundle``: MONAI's own runner segments a scan as ``plgg-fl predict`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.run import PredictOptions, predict_inputs

pytestmark = pytest.mark.usefixtures("predict_one_thread")


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _monai_run(bundle, scans, out):
    """``python -m monai.bundle run`` in a fresh process (MONAI's runner; plgg-fl is not imported by the bundle)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--dataset_dir", str(scans), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout.decode("utf-8", "replace")[-3000:] + proc.stderr.decode("utf-8", "replace")[-3000:]


def test_monai_runner_gives_the_predict_mask_on_the_input_grid(predict_ckpt, tmp_path):
    from plgg_fl.cli import main

    bundle = tmp_path / "bundle"
    assert main(["export", "--format", "monai-bundle", "--model", str(predict_ckpt), str(bundle)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert "synthetic" in meta["data_source"] and "Research use only" in meta["intended_use"]
    assert "z-scored over non-zero voxels" in meta["image_classes"] and meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert (bundle / "docs" / "README.md").read_text(encoding="utf-8").startswith("# plgg-fl whole-tumour segmentation")
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert config["network_def"]["_target_"] == "DynUNet" and "plgg_fl" not in json.dumps(config)

    scans = tmp_path / "scans"
    scans.mkdir()
    cases = {"lia": blob_volume((48, 40, 16), (0.9, 1.1, 3.0), seed=26, tumour_radius_mm=9, axcodes=("L", "I", "A")),
             "ras": blob_volume((40, 44, 36), (1.2, 1.0, 1.5), seed=31, tumour_radius_mm=10)}
    for key, (img, _, aff) in cases.items():
        nib.save(nib.Nifti1Image(img, aff), str(scans / f"{key}.nii.gz"))
    _monai_run(bundle, scans, tmp_path / "monai")
    ref = predict_inputs([scans], predict_ckpt, tmp_path / "predict", PredictOptions(crop=False, precision="fp32", progress=False))
    assert ref.exit_code == 0, ref.text()
    for key, (img, seg, aff) in cases.items():
        ours = nib.load(str(tmp_path / "predict" / f"{key}_mask.nii.gz"))
        theirs = nib.load(str(tmp_path / "monai" / f"{key}_mask.nii.gz"))
        assert theirs.shape == img.shape and nib.aff2axcodes(theirs.affine) == nib.aff2axcodes(aff)
        np.testing.assert_allclose(theirs.affine, aff, atol=1e-4)
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert a.sum() > 0 and _dice(a, seg) > 0.5  # a model that finds the tumour, so agreement means something
        assert _dice(a, b) >= 0.999, (key, _dice(a, b), int((a != b).sum()))


def test_bundle_refuses_what_it_cannot_export(tmp_path, predict_ckpt):
    from plgg_fl.cli import main

    bad = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(bad))
    assert main(["export", "--format", "monai-bundle", "--model", str(bad), str(tmp_path / "b1")]) == 2
    (tmp_path / "b2").mkdir()
    (tmp_path / "b2" / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["export", "--format", "monai-bundle", "--model", str(predict_ckpt), str(tmp_path / "b2")]) == 2
    assert (tmp_path / "b2" / "keep.txt").exists() and not (tmp_path / "b2" / "configs").exists()
