"""Report building blocks on hand-made rows (fast; the real-run tests are in test_report.py)."""

from __future__ import annotations

import math

import pytest


def test_model_folders_matched_by_sent_scalars_not_by_order():
    from plgg_fl.report.collect import _match

    sent = {"stepwise": {"test/groups/model_vs_ref/dice/median": 0.5, "test/n_cases": 2.0},
            "scratch": {"test/groups/model_vs_ref/dice/median": 0.25, "test/n_cases": 2.0}}
    assert _match({"test/groups/model_vs_ref/dice/median": 0.25, "test/n_cases": 2.0}, sent) == "scratch"
    assert _match({"test/n_cases": 2.0}, sent) is None  # ambiguous -> caller falls back to the pipeline's order


def test_study_values_average_references_and_keep_undefined_hd95_out():
    from plgg_fl.report.tables import model_values, study_table

    nan = float("nan")
    rows = [{"key": "k1", "comparison": "model_vs_e1", "a": "model", "b": "e1", "dice": 0.8, "hd95_mm": nan},
            {"key": "k1", "comparison": "model_vs_e2", "a": "model", "b": "e2", "dice": 0.6, "hd95_mm": 4.0},
            {"key": "k2", "comparison": "model_vs_e1", "a": "model", "b": "e1", "dice": 0.0, "hd95_mm": nan},
            {"key": "k2", "comparison": "model_vs_e2", "a": "model", "b": "e2", "dice": 0.0, "hd95_mm": nan},
            {"key": "k1", "comparison": "e1_vs_e2", "a": "e1", "b": "e2", "dice": 0.9, "hd95_mm": 1.0}]
    assert model_values(rows, "dice") == {"k1": pytest.approx(0.7), "k2": 0.0}
    h = model_values(rows, "hd95_mm")
    assert h["k1"] == 4.0 and math.isnan(h["k2"])
    for r in rows:
        r.update(surface_dice=r["dice"], vol_diff_ml=1.0)
    (row,) = study_table({("s", "stepwise"): rows}, ["s"], ["stepwise"])
    assert row["n"] == 2 and row["hd95_mm"]["n"] == 1 and row["hd95_mm"]["n_undefined"] == 1
    assert math.isnan(row["p_vs_scratch"])  # no scratch in this run


def _fake_run(tmp_path, models: list[tuple[str, float]], sent: dict, nsd_tolerance_mm: float = 2.0):
    """A run folder by hand: site 's', one case; model_<n> labelled ``name`` (None: no label) with Dice ``d``. The rows
    carry no ``nsd_tolerance_mm`` (as per_case.csv files written before that column); the summary does."""
    import json

    from plgg_fl.engine.evaluate import summarise, write_json, write_rows

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text("name: fake\nevaluate: {sites: [s], splits: test}\n", encoding="utf-8")
    (tmp_path / "metrics.json").write_text(json.dumps({"evaluation": {"s": sent}, "summary": [{"method": m} for m in sent]}), encoding="utf-8")
    for n, (name, d) in enumerate(models, start=1):
        base = tmp_path / "nvflare/evaluate/plgg_evaluate/s/plgg_results/simulate_job" / f"model_{n}"
        rows = [{"key": "k1", "comparison": "model_vs_ref", "a": "model", "b": "ref", "dice": d, "hd95_mm": 1.0,
                 "surface_dice": d, "sensitivity": d, "precision": d, "vol_pred_ml": 1.0, "vol_ref_ml": 1.0, "vol_diff_ml": 0.0,
                 "hd95_defined": True, "pred_empty": False, "ref_empty": False, "spacing_mm": "1x1x1"}]
        write_rows(rows, base / "test" / "per_case.csv")
        write_json(summarise(rows, nsd_tolerance_mm=nsd_tolerance_mm), base / "test" / "summary.json")
        (base / "model.json").write_text(json.dumps({"model": name, "order": n}), encoding="utf-8")


def test_result_folders_take_the_label_checked_against_the_numbers(tmp_path):
    from plgg_fl.report.collect import load_run

    key = "test/groups/model_vs_ref/dice/median"
    # labels right, numbers unique
    _fake_run(tmp_path / "a", [("scratch", 0.2), ("stepwise", 0.6)], {"stepwise": {key: 0.6}, "scratch": {key: 0.2}})
    run = load_run(tmp_path / "a")
    assert run.per_case[("s", "stepwise")][0]["dice"] == 0.6 and not run.notes
    # identical numbers: the label decides
    _fake_run(tmp_path / "b", [("scratch", 0.5), ("stepwise", 0.5)], {"stepwise": {key: 0.5}, "scratch": {key: 0.5}})
    run = load_run(tmp_path / "b")
    assert set(run.per_case) == {("s", "scratch"), ("s", "stepwise")} and not run.notes
    # a label that contradicts the numbers loses, and is noted
    _fake_run(tmp_path / "c", [("stepwise", 0.2), ("scratch", 0.6)], {"stepwise": {key: 0.6}, "scratch": {key: 0.2}})
    run = load_run(tmp_path / "c")
    assert run.per_case[("s", "stepwise")][0]["dice"] == 0.6 and len(run.notes) == 2
    # no label and numbers that fit both: left out and said so, never assigned by order
    _fake_run(tmp_path / "d", [(None, 0.5), (None, 0.5)], {"stepwise": {key: 0.5}, "scratch": {key: 0.5}})
    run = load_run(tmp_path / "d")
    assert run.per_case == {} and len(run.notes) == 2 and all("left out" in n for n in run.notes)
    # two folders that both identify as one model: the second is left out, not written over the first
    _fake_run(tmp_path / "e", [("stepwise", 0.6), ("stepwise", 0.6)], {"stepwise": {key: 0.6}, "scratch": {key: 0.2}})
    run = load_run(tmp_path / "e")
    assert set(run.per_case) == {("s", "stepwise")} and len(run.notes) == 1 and "also identifies" in run.notes[0]


def test_surface_dice_label_carries_the_tolerance_the_results_used(tmp_path):
    from plgg_fl.engine.evaluate import read_rows, write_rows
    from plgg_fl.report.collect import load_run
    from plgg_fl.report.tables import multirater_cells, multirater_table, study_cells, study_table, surface_dice_label

    key = "test/groups/model_vs_ref/dice/median"
    # summary computed at 1.5 mm (per_case.csv without the column): the label says 1.5 mm, not the default 2
    _fake_run(tmp_path / "a", [("stepwise", 0.6)], {"stepwise": {key: 0.6}}, nsd_tolerance_mm=1.5)
    run = load_run(tmp_path / "a")
    study = study_table(run.per_case, ["s"], ["stepwise"])
    head, _ = study_cells(study)
    assert "Surface Dice (1.5 mm) median [IQR]" in head and not any("2 mm" in h for h in head)
    assert study[0]["nsd_tolerances_mm"] == [1.5]
    # rows that carry the column (as evaluate_cases writes them) label themselves
    rows = [dict(r, nsd_tolerance_mm=1.5) for r in run.per_case[("s", "stepwise")]]
    rows += [dict(rows[0], comparison="ref_vs_ref2", a="ref", b="ref2"), dict(rows[0], comparison="model_vs_ref2", b="ref2")]
    write_rows(rows, tmp_path / "per_case.csv")
    back = read_rows(tmp_path / "per_case.csv")
    assert {r["nsd_tolerance_mm"] for r in back} == {1.5}
    head, _ = multirater_cells(multirater_table({"stepwise": back}))
    assert "Surface Dice (1.5 mm) median [IQR]" in head
    # nothing recorded / different tolerances: said so, never assumed
    assert surface_dice_label([None]) == "Surface Dice (tolerance not recorded)"
    assert surface_dice_label([1.5, 2.0]) == "Surface Dice (tolerances differ: 1.5, 2 mm)"
    head, body = study_cells(study + [dict(study[0], method="scratch", nsd_tolerances_mm=[2.0])])
    assert "Surface Dice (tolerances differ: 1.5, 2 mm) median [IQR]" in head
    assert "[1.5 mm]" in body[0][head.index("Surface Dice (tolerances differ: 1.5, 2 mm) median [IQR]")]
