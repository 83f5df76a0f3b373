"""`plgg-fl train` and `plgg-fl evaluate` end to end on a tiny toy manifest (tiny preset, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plgg_fl.cli import main
from plgg_fl.data.manifest import Case, Manifest, write_manifest
from plgg_fl.engine import load_checkpoint
from plgg_fl.engine.toydata import write_toy_case

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture()
def manifest(tmp_path) -> Path:
    cases = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        c = write_toy_case(tmp_path / "data", f"k{i}", seed=20 + i, shape=(32, 32, 32), spacing_mm=(2.0, 2.0, 2.0))
        masks = {"ref": Path(c["label"])}
        if split == "test":
            masks["second"] = Path(c["label"])
        cases.append(Case(key=c["key"], split=split, image=Path(c["image"]), masks=masks))
    m = Manifest(site="toy", root=tmp_path / "data", cases=cases)
    return write_manifest(m, tmp_path / "data" / "manifest.yaml")


def test_train_then_evaluate_from_the_command_line(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--manifest", str(manifest), "--preset", "tiny", "--out", str(out), "--steps", "4",
               "--val-every", "2", "--device", "cpu", "--no-progress", "--set", "optimizer=adamw", "--set", "lr=0.003"])
    assert rc == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["total_steps"] for r in log] == [2, 4] and all("val_dice" in r for r in log)
    model, cfg, meta = load_checkpoint(out / "model.pt")
    assert meta["step"] == 4 and cfg.preset == "tiny" and cfg.optimizer == "adamw"
    assert (out / "best.pt").is_file()
    # stage-3 style continuation from the checkpoint
    rc = main(["train", "--manifest", str(manifest), "--init", str(out / "model.pt"), "--freeze-encoder",
               "--out", str(tmp_path / "dec"), "--steps", "2", "--val-every", "2", "--no-progress"])
    assert rc == 0 and load_checkpoint(tmp_path / "dec" / "model.pt")[2]["freeze_encoder"] is True
    rc = main(["evaluate", "--manifest", str(manifest), "--split", "test", "--model", str(out / "model.pt"),
               "--out", str(tmp_path / "ev"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["groups"]) >= {"model_vs_ref", "model_vs_second", "ref_vs_second"}
    assert summary["groups"]["ref_vs_second"]["dice"]["median"] == 1.0
    assert "model_vs_ref" in capsys.readouterr().out
    rc = main(["compare", str(tmp_path / "ev" / "per_case.csv"), str(tmp_path / "ev" / "per_case.csv")])
    assert rc == 0 and "no non-zero paired differences" in capsys.readouterr().out


def _one_error_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"plgg-fl {command}: error: "), err
    return err[0]


def test_train_without_its_manifest_is_one_error_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope" / "manifest.yaml"
    assert main(["train", "--manifest", str(missing), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert _one_error_line(capsys, "train") == f"plgg-fl train: error: manifest not found ({missing})"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spelling", ["--model", "--ckpt"])
def test_evaluate_without_its_checkpoint_is_one_error_line_exit_2(manifest, tmp_path, capsys, spelling):
    missing = tmp_path / "gone.pt"
    argv = ["evaluate", "--manifest", str(manifest), spelling, str(missing), "--out", str(tmp_path / "ev"), "--no-progress"]
    assert main(argv) == 2
    assert _one_error_line(capsys, "evaluate") == f"plgg-fl evaluate: error: checkpoint not found ({missing})"


def test_a_checkpoint_has_one_name_and_old_spellings_are_hidden(capsys):
    """`--model` is a model a command uses, `--init` one training starts from; old names parse, unlisted."""
    from plgg_fl.cli import build_parser

    parser = build_parser()
    for argv, dest, old in ((["evaluate", "--manifest", "m", "--out", "o"], "model", "--ckpt"),
                            (["review-packet", "--out", "o"], "model", "--checkpoint"),
                            (["jobs", "export"], "initial_ckpt", "--initial-ckpt")):
        new = "--init" if dest == "initial_ckpt" else "--model"
        for spelling in (new, old):
            assert str(getattr(parser.parse_args([*argv, spelling, "/c.pt"]), dest)) == "/c.pt"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv[: 2 if argv[0] == "jobs" else 1], "-h"])
        shown = capsys.readouterr().out
        assert new in shown and old not in shown, shown


def test_a_stopped_run_resumes_with_its_optimizer_and_schedule(manifest, tmp_path, capsys):
    """Train 6 steps in one go, and 3 steps then --resume to 6: the resumed run continues the step
    count, the LR schedule and the optimizer's moments (patches are sampled afresh, so the weights differ)."""
    from plgg_fl.engine.checkpoint import read_checkpoint

    common = ["--manifest", str(manifest), "--preset", "tiny", "--val-every", "3", "--device", "cpu", "--no-progress",
              "--set", "optimizer=adamw", "--set", "lr=0.003"]
    assert main(["train", *common, "--out", str(tmp_path / "whole"), "--steps", "6"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "split"), "--steps", "3"]) == 0
    first = read_checkpoint(tmp_path / "split" / "model.pt")["training_state"]
    assert first["step"] == 3 and first["optimizer"]["state"]  # Adam moments saved with the weights
    assert main(["train", "--manifest", str(manifest), "--out", str(tmp_path / "split"), "--resume", "--steps", "6",
                 "--device", "cpu", "--no-progress", "--val-every", "3"]) == 0
    whole = read_checkpoint(tmp_path / "whole" / "model.pt")["training_state"]
    resumed = read_checkpoint(tmp_path / "split" / "model.pt")["training_state"]
    assert resumed["step"] == whole["step"] == 6
    assert resumed["scheduler"]["last_epoch"] == whole["scheduler"]["last_epoch"]
    assert resumed["scheduler"]["_last_lr"] == pytest.approx(whole["scheduler"]["_last_lr"])
    # Adam's per-parameter step counter went on from 3, not from 0
    assert all(float(s["step"]) == 6 for s in resumed["optimizer"]["state"].values())
    log = [json.loads(x) for x in (tmp_path / "split" / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["total_steps"] for r in log] == [3, 6]
    # resuming a run already at its last step trains nothing and still ends cleanly, keeping best.pt
    assert main(["train", "--manifest", str(manifest), "--out", str(tmp_path / "split"), "--resume", "--steps", "6",
                 "--device", "cpu", "--no-progress"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["train", "--manifest", str(manifest), "--out", str(tmp_path / "none"), "--resume", "--no-progress"]) == 2
    assert "no model.pt to continue from" in capsys.readouterr().err
