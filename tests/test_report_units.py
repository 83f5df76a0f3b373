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
