"""Clinical review kit: the packet is blinded (nothing in it names a mask's source; the key lies apart), and
scoring synthetic filled sheets gives the percentages and tests expected by construction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, chi2_contingency, fisher_exact, mannwhitneyu

from plgg_fl.review.packet import KEY_COLUMNS, SHEET_COLUMNS
from plgg_fl.review.score import read_key, read_sheets, score


@pytest.fixture(scope="module")
def review_cohort(tmp_path_factory):
    """The tiny synthetic dfci_bch site (test cases with three expert masks) and a tiny random-init model checkpoint."""
    from plgg_fl.engine import PlggUNet, TrainConfig, save_checkpoint
    from plgg_fl.synth import generate_cohort

    tmp = tmp_path_factory.mktemp("review")
    manifest = generate_cohort(tmp / "cohort", size="tiny", sites=["dfci_bch"], progress=False)["dfci_bch"]
    cfg = TrainConfig.for_preset("tiny", patch_size=[32, 32, 32], spacing_mm=[4.0, 4.0, 4.0], sw_batch_size=1, device="cpu")
    ckpt = save_checkpoint(tmp / "model.pt", PlggUNet(preset="tiny"), cfg, step=0)
    return manifest, ckpt, tmp


@pytest.fixture(scope="module")
def packet(review_cohort):
    from plgg_fl.cli import main

    manifest, ckpt, tmp = review_cohort
    out = tmp / "packet"
    assert main(["review-packet", "--model", str(ckpt), "--manifest", str(manifest), "--out", str(out), "-n", "5", "--seed", "3"]) == 0
    return out, tmp / "packet_KEY.csv", manifest


def test_packet_is_blinded_and_key_kept_apart(packet):
    from plgg_fl.data.manifest import load_manifest

    out, key_path, manifest = packet
    assert key_path.is_file() and not key_path.resolve().is_relative_to(out.resolve())
    key = list(csv.DictReader(key_path.open()))
    sheet = list(csv.DictReader((out / "rating_sheet.csv").open()))
    assert list(sheet[0]) == SHEET_COLUMNS and list(key[0]) == KEY_COLUMNS
    test_cases = [c for c in load_manifest(manifest).cases if c.split == "test"]
    assert len(key) == len(sheet) == len(test_cases) * 4  # model + 3 experts per case
    assert [r["item"] for r in sheet] == [r["item"] for r in key]
    case_keys = {c.key for c in test_cases}
    leaks = ["model", "expert", "ai", "stepwise", *case_keys]
    for r in sheet:
        text = " ".join(r[c] for c in ("item", "case", "image")).lower()
        assert not any(w in text for w in leaks), text
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == [f"{r['item']}.png" for r in sheet]
    for p in (out / "images").iterdir():  # PNG text chunks / metadata carry no source either
        data = p.read_bytes().lower()
        assert not any(w.encode() in data for w in ("model", "expert", *case_keys))
    assert not any(w in p.name.lower() for p in out.rglob("*") for w in leaks)
    sources = [r["source"] for r in key]
    assert sorted(set(sources)) == ["expert1", "expert2", "expert3", "model"]
    assert {r["source_type"] for r in key if r["source"] == "model"} == {"AI"}
    # shuffled across cases and sources: not case-by-case in source order
    assert sources != [s for _ in test_cases for s in ("model", "expert1", "expert2", "expert3")]


def test_packet_is_reproducible_and_refuses_key_inside(review_cohort, packet):
    from plgg_fl.cli import main

    manifest, ckpt, tmp = review_cohort
    out, key_path, _ = packet
    again = tmp / "again"
    assert main(["review-packet", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--out", str(again), "-n", "5", "--seed", "3"]) == 0
    assert (tmp / "again_KEY.csv").read_text(encoding="utf-8") == key_path.read_text(encoding="utf-8")
    assert main(["review-packet", "--model", str(ckpt), "--manifest", str(manifest), "--out", str(tmp / "p3"),
                 "--key", str(tmp / "p3" / "key.csv")]) == 2


def _synthetic_study(tmp: Path):
    """Key of 10 cases x (AI + 3 experts) and two raters' sheets with answers chosen per item."""
    key = [{"item": f"R{i:03d}", "case": f"C{i // 4:02d}", "case_key": f"k{i // 4}",
            "source": "model" if i % 4 == 0 else f"expert{i % 4}", "source_type": "AI" if i % 4 == 0 else "expert"} for i in range(40)]
    kp = tmp / "key.csv"
    with kp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=KEY_COLUMNS)
        w.writeheader()
        w.writerows(key)
    sheets = []
    for rater in ("ra", "rb"):
        rows = []
        ai_n = ex_n = 0
        for k in key:
            if k["source_type"] == "AI":  # AI: score 8, acceptable 8/10, called AI 6/10 (per rater)
                rows.append([k["item"], 8, "yes" if ai_n < 8 else "no", "yes" if ai_n < 6 else "no"])
                ai_n += 1
            else:  # experts: score 6 (7 for rater b), acceptable 20/30, called AI 3/30
                rows.append([k["item"], 6 if rater == "ra" else 7, "yes" if ex_n < 20 else "no", "yes" if ex_n < 3 else "no"])
                ex_n += 1
        p = tmp / f"rating_sheet_{rater}.csv"
        with p.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["item", "score_1_10", "acceptable_yes_no", "made_by_ai_yes_no", "comments"])
            w.writerows([*rows[:-1], [*rows[-1], "borderline"]])
        sheets.append(p)
    return kp, sheets


def test_scoring_synthetic_sheets_gives_expected_percentages(tmp_path):
    kp, sheets = _synthetic_study(tmp_path)
    res = score(read_sheets(sheets, read_key(kp)))
    ai, ex = res["by_source"]["AI"], res["by_source"]["expert"]
    assert res["n_ratings"] == 80 and res["raters"] == ["rating_sheet_ra", "rating_sheet_rb"]
    assert ai["acceptable"]["percent"] == pytest.approx(80.0) and ex["acceptable"]["percent"] == pytest.approx(200 / 3)
    assert res["turing"]["ai_identified_percent"] == pytest.approx(60.0)
    assert res["turing"]["experts_called_ai_percent"] == pytest.approx(10.0)
    assert res["turing"]["accuracy_percent"] == pytest.approx(100 * (12 + 54) / 80)
    assert ai["score"]["median"] == 8 and ex["score"]["median"] == 6.5 and ex["score"]["q1"] == 6 and ex["score"]["q3"] == 7
    # the tests, recomputed with scipy directly
    assert res["score_test"]["p_value"] == pytest.approx(mannwhitneyu([8] * 20, [6] * 30 + [7] * 30).pvalue)
    assert res["acceptable_test"]["test"].startswith("chi-square")
    assert res["acceptable_test"]["p_value"] == pytest.approx(chi2_contingency(np.array([[16, 4], [40, 20]]))[1])
    assert res["turing"]["binomial_test"]["p_value"] == pytest.approx(binomtest(12, 20, 0.5).pvalue)
    assert res["turing"]["association_test"]["p_value"] == pytest.approx(fisher_exact([[12, 8], [6, 54]])[1])
    assert res["per_rater"]["rating_sheet_ra"]["by_source"]["AI"]["acceptable"]["percent"] == pytest.approx(80.0)


def test_review_score_cli_and_sheet_errors(tmp_path, capsys):
    from plgg_fl.cli import main

    kp, sheets = _synthetic_study(tmp_path)
    out = tmp_path / "scores.json"
    assert main(["review-score", *map(str, sheets), "--key", str(kp), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["by_source"]["AI"]["acceptable"]["percent"] == 80.0
    assert "AI identified 60.0%" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("item,score_1_10,acceptable_yes_no,made_by_ai_yes_no\nR000,11,yes,no\n", encoding="utf-8")
    assert main(["review-score", str(bad), "--key", str(kp)]) == 2
    assert "R000" in capsys.readouterr().err


def test_small_tables_use_fisher_and_blanks_are_counted(tmp_path):
    kp, _ = _synthetic_study(tmp_path)
    sheet = tmp_path / "few.csv"
    sheet.write_text("rater,item,score_1_10,acceptable_yes_no,made_by_ai_yes_no\n"
                     "dr_x,R000,9,yes,yes\ndr_x,R001,4,no,no\ndr_x,R002,,yes,\ndr_x,R004,8,yes,no\n", encoding="utf-8")
    res = score(read_sheets([sheet], read_key(kp)))
    assert res["raters"] == ["dr_x"] and res["n_ratings"] == 4
    assert res["acceptable_test"]["test"].startswith("Fisher")
    assert res["acceptable_test"]["p_value"] == pytest.approx(fisher_exact([[2, 0], [1, 1]])[1])
    ex = res["by_source"]["expert"]
    assert ex["blank"] == {"score": 1, "acceptable": 0, "called_ai": 1}
    assert ex["acceptable"]["percent"] == pytest.approx(50.0) and ex["score"]["n"] == 1
    assert res["turing"]["ai_identified_percent"] == pytest.approx(50.0)
