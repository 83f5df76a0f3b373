"""`plgg-fl simulate` / `demo` / `report` / `data check` fail cleanly and never touch an earlier run (fast: no
simulator; the run itself is replaced where a test needs one)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plgg_fl.cli import main
from plgg_fl.pipeline.config import METHODS, load_config

REPO = Path(__file__).resolve().parents[1]


def _err_lines(capsys) -> tuple[str, list[str]]:
    cap = capsys.readouterr()
    return cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


# --config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["{tmp}/tiny.yaml", "{tmp}/configs/tiny", "simulator_configs/nope.yaml"])
def test_a_config_path_that_does_not_exist_is_an_error_not_the_bundled_config(given, tmp_path, capsys):
    path = given.format(tmp=tmp_path)
    assert main(["simulate", "--config", path, "--dry-run"]) == 2
    out, err = _err_lines(capsys)
    assert err == [f"plgg-fl simulate: error: config file not found ({path})"]
    assert "config OK" not in out


def test_a_bare_name_is_looked_up_in_the_bundled_configs(capsys):
    from plgg_fl.pipeline.cli import find_config

    assert find_config("tiny").resolve() == (REPO / "simulator_configs" / "tiny.yaml").resolve()
    assert main(["simulate", "--config", "nope", "--dry-run"]) == 2
    _, err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("plgg-fl simulate: error: no config named 'nope'")


# --methods -----------------------------------------------------------------------------------------

def test_an_unknown_method_is_an_error_that_lists_the_valid_ones(tmp_path, monkeypatch, capsys):
    from plgg_fl.pipeline.run import Pipeline

    def must_not_run(self):
        raise AssertionError("the pipeline ran with an unknown method")

    monkeypatch.setattr(Pipeline, "run", must_not_run)
    for extra in (["--dry-run"], ["--out", str(tmp_path)]):
        assert main(["simulate", "--config", "tiny", "--methods", "stepwise", "stepwsie", *extra]) == 2
        _, err = _err_lines(capsys)
        assert len(err) == 1 and "'stepwsie'" in err[0] and "(--methods)" in err[0], err
        assert all(m in err[0] for m in METHODS)
    assert not list(tmp_path.iterdir())


# the console table ---------------------------------------------------------------------------------

def _metrics(median: float, refs: list[str], split: str = "test") -> dict:
    out = {}
    for ref in refs:
        base = f"{split}/groups/{ref}/dice"
        out.update({f"{base}/median": median, f"{base}/q1": median / 2, f"{base}/q3": median + 0.1, f"{base}/n": 7})
    return out


def test_the_console_table_fits_100_columns_one_row_per_method_agreement_its_own_row():
    from plgg_fl.pipeline.report import summary_rows, summary_table

    methods = ["adult_only", "scratch", "transfer", "stepwise", "local_only[cbtn]", "local_only[dfci_bch]", "pooled"]
    dfci = ["model_vs_expert1", "model_vs_expert2", "model_vs_expert3", "model_vs_raters", "inter_rater"]
    evaluation = {"cbtn": {m: _metrics(0.1 * i, ["model_vs_ref"]) for i, m in enumerate(methods)},
                  "dfci_bch": {m: _metrics(0.05 * i, dfci) for i, m in enumerate(methods)}}
    rows = summary_rows(evaluation, methods)
    table = summary_table(rows, ["cbtn", "dfci_bch"])
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100, table
    for m in methods:
        assert sum(ln.split("  ")[0] == m for ln in lines) == 1, table
    head = next(ln for ln in lines if ln.startswith("method"))
    assert re.split(r"\s{2,}", head.strip()) == ["method", "cbtn", "dfci_bch (3 experts)"]
    stepwise = next(ln for ln in lines if ln.startswith("stepwise "))
    assert "0.300 [0.150-0.400]" in stepwise and "0.150 [0.075-0.250]" in stepwise  # cbtn vs ref, dfci_bch pooled
    agreement = next(ln for ln in lines if ln.startswith("inter-expert agreement"))
    assert re.split(r"\s{2,}", agreement.strip()) == ["inter-expert agreement", "-", "0.000 [0.000-0.100]"]
    from plgg_fl.pipeline.report import reference_table  # every reference, for summary.txt

    detail = reference_table(rows, ["cbtn", "dfci_bch"])
    assert "dfci_bch: model_vs_expert2" in detail and max(map(len, detail.splitlines())) <= 100
    # more test sets than fit side by side: further blocks, still 100 columns
    wide = {s: {m: {**_metrics(0.5, ["model_vs_ref"]), **_metrics(0.4, ["model_vs_ref"], "val")} for m in methods}
            for s in ("cbtn", "dfci_bch", "site_c")}
    table = summary_table(summary_rows(wide, methods), ["cbtn", "dfci_bch", "site_c"])
    assert max(map(len, table.splitlines())) <= 100 and "site_c val" in table


def test_a_site_that_sent_counts_only_shows_as_counts_in_both_tables():
    """Fewer test cases than a site's minimum for a summary: the site sends n alone, shown as such."""
    from plgg_fl.fl.protocol import summary_key
    from plgg_fl.pipeline.report import reference_table, summary_rows, summary_table

    counts = {summary_key("test", c, "dice", "n"): 2.0 for c in ("model_vs_expert1", "model_vs_raters", "inter_rater")}
    evaluation = {"cbtn": {"stepwise": _metrics(0.5, ["model_vs_ref"])}, "dfci_bch": {"stepwise": counts}}
    rows = summary_rows(evaluation, ["stepwise"])
    stepwise = next(ln for ln in summary_table(rows, ["cbtn", "dfci_bch"]).splitlines() if ln.startswith("stepwise "))
    assert re.split(r"\s{2,}", stepwise.strip()) == ["stepwise", "0.500 [0.250-0.600]", "counts only (n=2)"]
    detail = reference_table(rows, ["cbtn", "dfci_bch"]).splitlines()
    assert [ln.split("  ")[-1].strip() for ln in detail if "dfci_bch: model_vs_expert1" in ln] == ["counts only (n=2)"]
    assert [ln.split("  ")[-1].strip() for ln in detail if "cbtn: model_vs_ref" in ln] == ["0.500 [0.250-0.600] (7)"]


# re-running into an existing run folder ------------------------------------------------------------

def _earlier_run(folder: Path) -> None:
    (folder / "models").mkdir(parents=True)
    (folder / "report").mkdir()
    (folder / "config.yaml").write_text("name: tiny\n", encoding="utf-8")
    (folder / "metrics.json").write_text("{}", encoding="utf-8")
    (folder / "models" / "stepwise.pt").write_bytes(b"earlier model")
    (folder / "report" / "report.html").write_text("earlier report", encoding="utf-8")


def test_a_rerun_writes_beside_an_earlier_run_and_overwrite_replaces_it_report_included(tmp_path, monkeypatch):
    from plgg_fl.pipeline.run import Pipeline

    cfg = load_config(REPO / "simulator_configs" / "tiny.yaml")
    _earlier_run(tmp_path / "tiny")
    p = Pipeline(cfg, out_root=tmp_path, printer=lambda s: None)
    assert p.out == (tmp_path / "tiny-2").resolve()
    monkeypatch.setattr(Pipeline, "_run", lambda self: {"ran_in": str(self.out)})  # the run itself is not tested here
    p.run()
    assert (tmp_path / "tiny" / "models" / "stepwise.pt").read_bytes() == b"earlier model"
    assert (tmp_path / "tiny" / "report" / "report.html").is_file()
    assert Pipeline(cfg, out_root=tmp_path, printer=lambda s: None).out == (tmp_path / "tiny-3").resolve()
    p = Pipeline(cfg, out_root=tmp_path, printer=lambda s: None, overwrite=True)
    assert p.out == (tmp_path / "tiny").resolve()
    p.run()
    assert not (tmp_path / "tiny" / "models").exists() and not (tmp_path / "tiny" / "report").exists()
    assert json.loads((tmp_path / "tiny" / "status.json").read_text(encoding="utf-8"))["state"] == "done"


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    from plgg_fl.errors import CommandError
    from plgg_fl.pipeline.run import Pipeline

    cfg = load_config(REPO / "simulator_configs" / "tiny.yaml")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "thesis.tex").write_text("mine", encoding="utf-8")
    monkeypatch.setattr(Pipeline, "_run", lambda self: {})
    with pytest.raises(CommandError, match="something other than a run"):
        Pipeline(cfg, out_root=tmp_path, printer=lambda s: None, overwrite=True).run()
    assert (tmp_path / "tiny" / "thesis.tex").is_file()


# plgg-fl report on an unfinished run ---------------------------------------------------------------

def _status(folder: Path, **kw) -> None:
    (folder / "status.json").write_text(json.dumps({"host": os.uname().nodename, "started": "t0", **kw}), encoding="utf-8")


def test_report_refuses_a_run_in_progress_failed_or_interrupted_and_says_why(tmp_path, capsys):
    run = tmp_path / "tiny"
    _earlier_run(run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cases = [({"state": "running", "pid": os.getpid()}, "still in progress"),
             ({"state": "running", "pid": gone.pid}, "stopped before finishing"),
             ({"state": "failed", "pid": 1, "reason": "plgg_finetune: site 'cbtn' sent nothing"}, "site 'cbtn' sent nothing"),
             ({"state": "interrupted", "pid": 1}, "interrupted")]
    for status, why in cases:
        _status(run, **status)
        assert main(["report", str(run), "--gallery", "0"]) == 2
        out, err = _err_lines(capsys)
        assert len(err) == 1 and err[0].startswith("plgg-fl report: error: ") and why in err[0], err
        assert str(run.resolve()) in err[0] and not out


def test_the_run_records_failed_and_interrupted_in_its_status(tmp_path, monkeypatch):
    from plgg_fl.pipeline.run import Pipeline
    from plgg_fl.pipeline.simulate import StageFailed
    from plgg_fl.pipeline.status import read_status, unfinished_reason

    cfg = load_config(REPO / "simulator_configs" / "tiny.yaml")
    for exc, state in ((StageFailed("plgg_finetune: site 'cbtn' sent no result\n    log line"), "failed"),
                       (KeyboardInterrupt(), "interrupted")):
        def boom(self, exc=exc):
            assert read_status(self.out)["state"] == "running"
            raise exc

        monkeypatch.setattr(Pipeline, "_run", boom)
        p = Pipeline(cfg, out_root=tmp_path / state, printer=lambda s: None)
        with pytest.raises(type(exc)):
            p.run()
        assert read_status(p.out)["state"] == state
        assert state in unfinished_reason(p.out)
    assert "site 'cbtn' sent no result" in unfinished_reason(tmp_path / "failed" / "tiny")


# plgg-fl data check --------------------------------------------------------------------------------

def test_data_check_with_a_missing_data_root_says_so_once(tmp_path, capsys):
    cases = [{"key": f"c{i}", "split": "train", "image": f"c{i}_t2.nii.gz", "masks": {"ref": f"c{i}_seg.nii.gz"}}
             for i in range(5)]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(json.dumps({"schema_version": 1, "site": "cbtn", "data_root": "/nonexistent/cbtn",
                                    "cases": cases}), encoding="utf-8")
    assert main(["data", "check", str(manifest), "--no-progress"]) == 2
    out, err = _err_lines(capsys)
    assert err == ["plgg-fl data check: error: data root does not exist: /nonexistent/cbtn "
                   f"(data_root of {manifest})"], err
    assert not out.strip()


# help ----------------------------------------------------------------------------------------------

def _option_blocks(help_text: str) -> dict[str, str]:
    """``{"--out OUT": "its help text", ...}`` from argparse's formatted help (options section)."""
    blocks: dict[str, str] = {}
    section, key = "", None
    for line in help_text.splitlines():
        if line and not line.startswith(" "):
            section, key = line, None
            continue
        if section.startswith("options") and re.match(r"^  -", line):
            key, _, rest = line.strip().partition("  ")
            blocks[key] = rest.strip()
        elif key and line.strip():
            blocks[key] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("command", ["simulate", "demo", "report"])
def test_help_has_a_description_and_every_option_that_takes_a_value_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert not description.startswith(("positional", "options")) and len(description) > 40, text
    for opt, helptext in _option_blocks(text).items():
        if opt.startswith("-h") or " " not in opt.split(",")[-1].strip():  # --help and on/off flags
            continue
        assert "default" in helptext, (opt, helptext)


# one style for errors ------------------------------------------------------------------------------

def test_usage_errors_of_other_commands_are_one_line_in_the_common_style(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PLGG_FL_ADMIN_KIT", raising=False)
    cases = [(["status"], "plgg-fl status: error: give --kit ADMIN_KIT_DIR (or set $PLGG_FL_ADMIN_KIT)"),
             (["review-packet", "--out", str(tmp_path / "p")], "plgg-fl review-packet: error: give --run RUN_DIR or --model CKPT"),
             (["jobs", "export", "--config", "nope", "--out", str(tmp_path / "j")],
              "plgg-fl jobs export: error: no config named 'nope'; bundled: demo, paper, study, tiny (")]
    for argv, line in cases:
        assert main(argv) == 2
        out, err = _err_lines(capsys)
        assert len(err) == 1 and err[0].startswith(line), err


def test_a_pretrained_model_of_another_preset_is_refused_by_name(tmp_path):
    import torch

    from plgg_fl.engine import PlggUNet
    from plgg_fl.pipeline.config import load_config
    from plgg_fl.pipeline.run import Pipeline
    from plgg_fl.pipeline.simulate import StageFailed

    ckpt = tmp_path / "small.pt"
    torch.save({"model": PlggUNet(preset="small").state_dict()}, ckpt)
    cfg = load_config(REPO / "simulator_configs" / "tiny.yaml")  # preset tiny
    pipe = Pipeline(cfg, out_root=tmp_path / "runs", printer=lambda s: None)
    with pytest.raises(StageFailed, match="is not a 'tiny' network"):
        pipe.use_pretrained(ckpt)
    torch.save({"model": PlggUNet(preset="tiny").state_dict()}, ckpt)
    assert pipe.use_pretrained(ckpt).is_file()


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_a_saved_config_reloads_to_the_same_config(name):
    """config.yaml next to a run is the run's config: gpu and job_timeout_s were dropped before."""
    import dataclasses

    import yaml

    from plgg_fl.pipeline.cli import find_config
    from plgg_fl.pipeline.config import config_from_dict, dump_config, read_yaml

    data = read_yaml(find_config(name))
    data.update(gpu="0", job_timeout_s=1234.0)
    cfg = config_from_dict(data, name, name)
    again = config_from_dict(yaml.safe_load(dump_config(cfg)), "reloaded", name)
    assert dataclasses.replace(again, source=cfg.source) == cfg


def test_a_top_level_seed_is_an_error_naming_the_two_seeds_that_exist():
    from plgg_fl.pipeline.cli import find_config
    from plgg_fl.pipeline.config import ConfigError, config_from_dict, read_yaml

    data = {**read_yaml(find_config("tiny")), "seed": 3}
    with pytest.raises(ConfigError, match=r"train\.seed .*cohort\.seed"):
        config_from_dict(data, "tiny", "tiny")
