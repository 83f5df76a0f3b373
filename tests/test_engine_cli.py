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
    rc = main(["evaluate", "--manifest", str(manifest), "--split", "test", "--ckpt", str(out / "model.pt"),
               "--out", str(tmp_path / "ev"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["groups"]) >= {"model_vs_ref", "model_vs_second", "ref_vs_second"}
    assert summary["groups"]["ref_vs_second"]["dice"]["median"] == 1.0
    assert "model_vs_ref" in capsys.readouterr().out
    rc = main(["compare", str(tmp_path / "ev" / "per_case.csv"), str(tmp_path / "ev" / "per_case.csv")])
    assert rc == 0 and "no non-zero paired differences" in capsys.readouterr().out
