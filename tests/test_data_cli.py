"""`plgg-fl data import ...` and `plgg-fl data check` through the real command-line entry point."""

import json

import numpy as np

from plgg_fl.cli import main


def _pairs(src, write, arrays, n=6):
    for i in range(n):
        img, mask = arrays(seed=i, radius=1 + i % 4)
        write(src / f"s{i}_t2.nii.gz", img)
        for rater in ("r1", "r2"):
            write(src / f"s{i}_seg_{rater}.nii.gz", mask, dtype=np.uint8)


def test_import_then_check_passes(tmp_path, data_write_nifti, data_case_arrays, capsys):
    src = tmp_path / "src"
    _pairs(src, data_write_nifti, data_case_arrays)
    out = tmp_path / "site" / "manifest.yaml"
    rc = main(["data", "import", "pairs", str(src), "--out", str(out), "--site", "cbtn", "--seed", "3",
               "--val-frac", "0.34", "--mask-pattern", "{key}_seg_{rater}.nii.gz", "--raters", "r2,r1", "--no-progress"])
    assert rc == 0 and out.is_file()
    assert "site cbtn, 6 cases (4 train, 2 val, 0 test)" in capsys.readouterr().out
    rc = main(["data", "check", str(out), "--json", str(tmp_path / "report.json"), "--no-progress"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert stdout.strip().splitlines()[-1] == "cbtn: 6 cases, 6 usable, 0 errors, 0 warnings"
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["n_usable"] == 6 and report["problems"] == []


def test_check_exits_1_on_an_unusable_case_and_prints_one_line_per_problem(
    tmp_path, data_write_nifti, data_case_arrays, capsys
):
    src = tmp_path / "src"
    _pairs(src, data_write_nifti, data_case_arrays)
    out = tmp_path / "manifest.json"
    assert main(["data", "import", "pairs", str(src), "--out", str(out), "--val-frac", "0",
                 "--mask-pattern", "{key}_seg_{rater}.nii.gz", "--no-progress"]) == 0
    good = (src / "s2_t2.nii.gz").read_bytes()
    (src / "s2_t2.nii.gz").write_bytes(good[:-200])  # damaged after import
    data_write_nifti(src / "s4_seg_r2.nii.gz", np.zeros((12, 12, 12)), dtype=np.uint8)  # empty: warning only
    capsys.readouterr()
    rc = main(["data", "check", str(out), "--json", str(tmp_path / "r.json"), "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[0].startswith("ERROR s2 s2_t2.nii.gz: truncated or corrupt gzip (")
    assert lines[1].startswith("WARNING s4 s4_seg_r2.nii.gz: empty reference mask (rater r2) in a train case")
    assert lines[-1] == "src: 6 cases, 5 usable, 1 errors, 1 warnings"
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["unusable"] == ["s2"] and {p["code"] for p in report["problems"]} == {"corrupt", "empty_mask"}
    # warnings alone do not make the check fail
    (src / "s2_t2.nii.gz").write_bytes(good)
    assert main(["data", "check", str(out), "--no-progress"]) == 0


def test_check_invalid_manifest_and_import_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "m.yaml"
    bad.write_text("site: x\ncases:\n  - key: a\n    split: training\n    image: a.nii.gz\n", encoding="utf-8")
    assert main(["data", "check", str(bad)]) == 2
    assert "'split' must be one of" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "import", "nnunet", str(tmp_path / "empty"), "--out", str(tmp_path / "o.yaml")]) == 2
    assert "dataset.json" in capsys.readouterr().err
    assert main(["data", "import", "brats", str(tmp_path / "empty"), "--out", str(tmp_path / "o.yaml")]) == 2
    assert "no cases found" in capsys.readouterr().err
