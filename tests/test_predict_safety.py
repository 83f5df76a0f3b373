"""Issue 12, ``plgg-fl predict``: a mask always belongs to its scan, and a run that cannot work stops
cleanly (exit 2, one line on stderr, no traceback) before it computes anything.

Tiny real data: blob volumes written as NIfTI in a tmp folder and a ``tiny`` model trained for 50
steps (~10 s). Where the issue talks about exit codes and tracebacks, the real ``plgg-fl`` command
runs in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plgg_fl.cli import main
from plgg_fl.engine.toydata import blob_volume
from plgg_fl.predict.io import discover_inputs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "inference.md"
GRID = dict(shape_ras=(40, 40, 40), spacing_mm=(1.5, 1.5, 1.5), tumour_radius_mm=9)


pytestmark = pytest.mark.usefixtures("predict_one_thread")


@pytest.fixture(scope="module")
def ckpt(predict_ckpt):
    return predict_ckpt


def write_scan(path: Path, seed: int, head: bool = False) -> np.ndarray:
    """Write a blob scan at ``path`` (``head``: not skull-stripped, no zero background); return its tumour."""
    img, seg, aff = blob_volume(seed=seed, **GRID)
    if head:
        img = img + 30 + np.random.default_rng(seed).random(img.shape, dtype=np.float32) * 5
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, aff), str(path))
    return seg


def write_like_scan(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, blob_volume(**GRID)[2]), str(path))
    return path


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def predict(*args) -> int:
    """``plgg-fl predict ARGS --no-progress`` in this process; returns the exit code."""
    return main(["predict", *map(str, args), "--no-progress"])


def cli(*args) -> subprocess.CompletedProcess:
    """The real ``plgg-fl predict`` in a fresh interpreter (one torch thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "plgg_fl.cli", "predict", *map(str, args), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def rows(out: Path) -> dict[str, dict]:
    with open(out / "volumes.csv", encoding="utf-8") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ output names


def test_same_file_name_in_patient_folders_gets_one_mask_each(ckpt, tmp_path):
    scans = {p: tmp_path / "scans" / p / "t2.nii.gz" for p in ("patientA", "patientB")}
    segs = {p: write_scan(path, seed) for (p, path), seed in zip(scans.items(), (31, 32))}
    out = tmp_path / "out"
    assert predict(*scans.values(), "--model", ckpt, "--out", out, "--overwrite") == 0
    assert sorted(p.name for p in out.glob("*_mask.nii.gz")) == ["patientA__t2_mask.nii.gz", "patientB__t2_mask.nii.gz"]
    table = rows(out)
    for p, path in scans.items():
        row = table[f"{p}__t2"]
        assert row["status"] == "ok" and row["input"] == str(path)
        assert row["mask"] == str(out / f"{p}__t2_mask.nii.gz")
        assert dice(load(out / f"{p}__t2_mask.nii.gz"), segs[p]) > 0.5


def test_names_fold_in_the_folders_that_tell_inputs_apart(tmp_path):
    from plgg_fl.predict.run import PredictOptions, collect_inputs

    img = np.ones((8, 8, 8), np.float32)
    rels = ("siteA/case.nii.gz", "siteB/case.nii.gz", "d/x/p1/t2.nii.gz", "d/y/p1/t2.nii.gz", "solo.nii.gz")
    for rel in rels:
        write_like_scan(tmp_path / rel, img)
    sources = [tmp_path / "siteA", tmp_path / "siteB", tmp_path / "d/x/p1/t2.nii.gz", tmp_path / "d/y/p1/t2.nii.gz"]
    sources += [tmp_path / "solo.nii.gz", tmp_path / "." / "solo.nii.gz"]  # the same file twice: segmented once
    items, failed = collect_inputs(sources, tmp_path / "out", PredictOptions(progress=False))
    assert not failed
    assert [i.key for i in items] == ["siteA__case", "siteB__case", "x__p1__t2", "y__p1__t2", "solo"]


def test_inputs_that_would_share_an_output_stop_the_run_before_any_work(ckpt, tmp_path, capsys):
    d, out = tmp_path / "scans", tmp_path / "out"
    write_scan(d / "a.nii.gz", 41)
    write_scan(d / "a.nii", 42)
    assert predict(d, "--model", ckpt, "--out", out, "--overwrite") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("plgg-fl predict: error:") and "a_mask.nii.gz" in line
    assert str(d / "a.nii.gz") in line and re.search(re.escape(str(d / "a.nii")) + r"(?!\.gz)", line)
    assert not list(out.glob("*.nii*")) and not (out / "volumes.csv").exists()

    # an output that would replace an input (here: both files given, --out is their folder)
    e = tmp_path / "e"
    write_scan(e / "b.nii.gz", 43)
    write_scan(e / "b_mask.nii.gz", 44)
    before = (e / "b_mask.nii.gz").read_bytes()
    assert predict(e / "b.nii.gz", e / "b_mask.nii.gz", "--model", ckpt, "--out", e, "--overwrite") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "b_mask.nii.gz" in line and "input" in line
    assert (e / "b_mask.nii.gz").read_bytes() == before and not (e / "volumes.csv").exists()

    # --out is the input folder itself: the next run would read the masks as scans
    assert predict(e, "--model", ckpt, "--out", e, "--overwrite") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "--out is an input folder" in line and str(e) in line
    assert (e / "b_mask.nii.gz").read_bytes() == before and not (e / "volumes.csv").exists()


def test_only_the_nnunet_channel_suffix_is_dropped(tmp_path):
    img = np.ones((8, 8, 8), np.float32)
    for name in ("pat_0001.nii.gz", "pat_0002.nii.gz", "case_0007_0000.nii.gz", "x_0001_0002.nii"):
        write_like_scan(tmp_path / name, img)
    assert [i.key for i in discover_inputs(tmp_path)] == ["case_0007", "pat_0001", "pat_0002", "x_0001_0002"]


# ------------------------------------------------------------------------------------ brain masks


def test_brain_masks_are_matched_by_exact_key(ckpt, tmp_path):
    scans, brains, out = tmp_path / "scans", tmp_path / "brains", tmp_path / "out"
    seg = write_scan(scans / "pat_0002.nii.gz", 33, head=True)
    write_like_scan(brains / "pat_0002.nii.gz", (blob_volume(seed=33, **GRID)[0] > 0).astype(np.uint8))
    other = np.zeros(seg.shape, np.uint8)
    other[:8] = 1  # another patient's brain mask, away from this tumour
    write_like_scan(brains / "pat.nii.gz", other)
    write_scan(scans / "p3.nii.gz", 34, head=True)
    write_like_scan(brains / "p3_brainmask.nii.gz", (blob_volume(seed=34, **GRID)[0] > 0).astype(np.uint8))
    write_scan(scans / "nomask.nii.gz", 35, head=True)
    write_like_scan(brains / "nomask_old.nii.gz", (blob_volume(seed=35, **GRID)[0] > 0).astype(np.uint8))  # not its key

    assert predict(scans, "--model", ckpt, "--out", out, "--brain-mask", brains) == 1
    table = rows(out)
    assert table["pat_0002"]["status"] == "ok" and table["pat_0002"]["brain_mask"] == str(brains / "pat_0002.nii.gz")
    assert dice(load(out / "pat_0002_mask.nii.gz"), seg) > 0.5
    assert table["p3"]["status"] == "ok" and table["p3"]["brain_mask"] == str(brains / "p3_brainmask.nii.gz")
    failed = table["nomask"]
    assert failed["status"] == "failed" and failed["error"].startswith(f"{scans / 'nomask.nii.gz'}: no brain mask")
    assert "nomask.nii.gz" in failed["error"] and "nomask_brainmask.nii.gz" in failed["error"]
    assert not (out / "nomask_mask.nii.gz").exists()


def test_one_brain_mask_file_with_several_scans_is_refused(ckpt, tmp_path, capsys):
    a, b, out = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "out"
    write_scan(a, 36, head=True)
    write_scan(b, 37, head=True)
    bm = write_like_scan(tmp_path / "a_brain.nii.gz", (blob_volume(seed=36, **GRID)[0] > 0).astype(np.uint8))
    assert predict(a, b, "--model", ckpt, "--out", out, "--brain-mask", bm) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "a_brain.nii.gz" in line and "2 input scans" in line
    assert predict(a, "--model", ckpt, "--out", out, "--brain-mask", tmp_path / "missing") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.endswith(f"brain mask file or folder not found ({tmp_path / 'missing'})"), line
    assert not list(out.glob("*_mask.nii.gz"))


# ------------------------------------------------------------------------------------ reports


def test_summary_and_csv_name_the_input_of_every_row(ckpt, tmp_path, capsys):
    good, bad, out = tmp_path / "in" / "good.nii.gz", tmp_path / "in" / "zeros.nii.gz", tmp_path / "out"
    write_scan(good, 38)
    write_like_scan(bad, np.zeros((40, 40, 40), np.float32))
    assert predict(good, bad, "--model", ckpt, "--out", out) == 1
    text = capsys.readouterr().out
    for key, path in (("good", good), ("zeros", bad)):
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:") or ln.strip().startswith(f"{key} ")]
        assert str(path) in line, text
        assert rows(out)[key]["input"] == str(path)
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {r["input"] for r in doc["results"]} == {str(good), str(bad)}


# ------------------------------------------------------------------------------------ setup errors


def test_unwritable_output_folder_is_one_clear_error_before_any_work(ckpt, tmp_path, monkeypatch, capsys):
    src = tmp_path / "s.nii.gz"
    write_scan(src, 39)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    p = cli(src, "--model", ckpt, "--out", blocker / "out")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    (line,) = error_lines(p.stderr)
    assert line.startswith("plgg-fl predict: error:") and str(blocker / "out") in line

    import plgg_fl.predict.run as prun

    calls: list = []
    monkeypatch.setattr(prun, "segment_scan", lambda *a, **k: calls.append(a))
    capsys.readouterr()
    assert predict(src, "--model", ckpt, "--out", blocker / "out") == 2 and not calls
    if os.geteuid() != 0:  # root writes anywhere; the file-in-the-way case above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert predict(src, "--model", ckpt, "--out", ro) == 2 and not calls
        assert "not writable" in capsys.readouterr().err


def test_model_that_is_not_a_checkpoint_is_one_clear_error(ckpt, tmp_path, capfd):
    src, out = tmp_path / "s.nii.gz", tmp_path / "out"
    write_scan(src, 40)
    p = cli(src, "--model", src, "--out", out)  # a scan given as the model
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    (line,) = error_lines(p.stderr)
    assert line.startswith("plgg-fl predict: error: not a plgg-fl model") and line.endswith(f" ({src})")
    assert "weights_only" not in p.stderr + p.stdout

    text = tmp_path / "model.pt"
    text.write_text("this is a text file\n", encoding="utf-8")
    raw = Path(ckpt).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (text, truncated, empty):
        capfd.readouterr()
        assert predict(src, "--model", bad, "--out", out) == 2
        got = capfd.readouterr()
        (line,) = error_lines(got.err)
        assert line.startswith("plgg-fl predict: error: not a plgg-fl model") and line.endswith(f" ({bad})"), line
        assert "weights_only" not in got.err + got.out
    assert not list(out.glob("*_mask.nii.gz"))


# ------------------------------------------------------------------------------------ odd inputs


def test_a_4d_single_volume_input_gets_a_mask_of_exactly_its_shape(ckpt, tmp_path):
    img, seg, aff = blob_volume(seed=45, **GRID)
    src, out = tmp_path / "v4d.nii.gz", tmp_path / "out"
    nib.save(nib.Nifti1Image(img[..., None], aff), str(src))
    assert predict(src, "--model", ckpt, "--out", out, "--prob") == 0
    for name in ("v4d_mask.nii.gz", "v4d_prob.nii.gz"):
        m = nib.load(str(out / name))
        assert m.shape == img.shape + (1,) and np.allclose(m.affine, aff, atol=1e-5)
    assert dice(load(out / "v4d_mask.nii.gz")[..., 0], seg) > 0.5


def test_a_4d_single_volume_mha_gets_a_mask_of_its_shape(tmp_path):
    import SimpleITK as sitk

    from plgg_fl.predict.io import ScanInput, read_scan, write_like

    img, seg, _ = blob_volume((20, 22, 24), (1.0, 1.2, 2.0), seed=49)
    vol = sitk.GetImageFromArray(img.transpose(2, 1, 0))
    vol.SetSpacing((1.0, 1.2, 2.0))
    sitk.WriteImage(sitk.JoinSeries([vol]), str(tmp_path / "v.mha"))  # size (20, 22, 24, 1)
    scan = read_scan(ScanInput("v", tmp_path / "v.mha", "sitk"))
    out = write_like(seg, scan, tmp_path / "v_mask.nii.gz")  # raises unless the grid matches
    assert nib.load(str(out)).shape == (20, 22, 24, 1)
    np.testing.assert_array_equal(load(out)[..., 0], seg)


def _docs_error_rows() -> list[list[str]]:
    """Rows (cells) of the first table under ``### Errors`` in docs/inference.md."""
    lines = DOCS.read_text(encoding="utf-8").split("### Errors", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[start + 2 : end]]


def test_nan_scan_fails_alone_and_the_docs_say_what_to_do(ckpt, tmp_path):
    d, out = tmp_path / "in", tmp_path / "out"
    write_scan(d / "good.nii.gz", 46)
    img = blob_volume(seed=47, **GRID)[0]
    img[img == 0] = np.nan  # e.g. a registration tool's "outside the field of view"
    write_like_scan(d / "nan.nii.gz", img)
    assert predict(d, "--model", ckpt, "--out", out) == 1
    table = rows(out)
    assert table["good"]["status"] == "ok" and table["nan"]["status"] == "failed"
    assert not (out / "nan_mask.nii.gz").exists()
    row = next(r for r in _docs_error_rows() if "NaN" in r[0])
    for needle in re.findall(r"`([^`]+)`", row[1]):
        assert needle in table["nan"]["error"]
    assert len(row) >= 3 and row[2], "the docs' error table says what to do"


def test_nibabel_header_warnings_go_to_the_run_log_not_the_console(ckpt, tmp_path):
    img, _, aff = blob_volume(seed=48, **GRID)
    odd = nib.Nifti1Image(img, aff)
    odd.header["qform_code"] = 9  # nibabel: "qform_code 9 not valid; setting to 0"
    src, out = tmp_path / "odd.nii.gz", tmp_path / "out"
    nib.save(odd, str(src))
    p = cli(src, "--model", ckpt, "--out", out)
    assert p.returncode == 0, p.stderr
    assert "not valid" not in p.stderr + p.stdout
    log = (out / "predict.log").read_text(encoding="utf-8").splitlines()
    assert any(str(src) in ln and "qform_code 9 not valid" in ln for ln in log), log


def test_export_takes_model_and_out_and_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from plgg_fl.cli import build_parser

    missing = tmp_path / "gone.pt"
    assert main(["export", "--model", str(missing), "--out", str(tmp_path / "exp")]) == 2
    assert error_lines(capsys.readouterr().err) == [f"plgg-fl export: error: checkpoint not found ({missing})"]
    assert main(["export", str(missing), str(tmp_path / "exp")]) == 2  # the old positional form still works
    assert error_lines(capsys.readouterr().err) == [f"plgg-fl export: error: checkpoint not found ({missing})"]
    assert main(["export", "--model", str(missing)]) == 2
    assert error_lines(capsys.readouterr().err) == ["plgg-fl export: error: give --model CKPT --out DIR"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "-h"])
    assert "legacy" not in capsys.readouterr().out
