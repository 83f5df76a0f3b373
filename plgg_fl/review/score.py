"""Score filled rating sheets against the packet key: AI vs experts (aggregates only; these may leave the site).

Statistics (all two-sided; ratings treated as independent observations, as in a reader study
summarised per mask type):

* quality score 1-10: median [IQR] for AI and expert masks; Mann-Whitney U (Wilcoxon rank-sum) test;
* acceptable: % yes for AI and expert masks; chi-square test of the 2x2 table (Yates-corrected), or
  Fisher's exact test when any expected count is below 5 (the test used is reported);
* Turing test ("made by AI?"): % of AI masks called AI (identification rate), % of expert masks called
  AI (false alarms), overall accuracy; exact binomial test of the identification rate against 0.5
  (chance), and Fisher's exact test of whether "called AI" depends on the true source.

Sheets: ``rating_sheet.csv`` copies filled by raters; the rater is the ``rater`` column if present,
else the file name. Blank answers are left out of that answer's statistics and counted.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

YES, NO = {"yes", "y", "1", "true"}, {"no", "n", "0", "false"}


class SheetError(ValueError):
    """A sheet value that cannot be read; the message names file, item and column."""


def _yn(v: str, where: str) -> bool | None:
    v = (v or "").strip().lower()
    if not v:
        return None
    if v in YES:
        return True
    if v in NO:
        return False
    raise SheetError(f"{where}: expected yes/no, got {v!r}")


def read_key(path: str | Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["item"]: r for r in csv.DictReader(fh)}


def read_sheets(paths: list[str | Path], key: dict[str, dict]) -> list[dict[str, Any]]:
    """Ratings ``{rater, item, source_type, source, score, acceptable, called_ai}`` (None = blank)."""
    out = []
    for p in paths:
        p = Path(p)
        with p.open(newline="") as fh:
            for r in csv.DictReader(fh):
                item = (r.get("item") or "").strip()
                if item not in key:
                    raise SheetError(f"{p}: item {item!r} is not in the key")
                where = f"{p} item {item}"
                s = (r.get("score_1_10") or "").strip()
                score = None
                if s:
                    try:
                        score = float(s)
                    except ValueError:
                        raise SheetError(f"{where}: score_1_10 must be a number, got {s!r}") from None
                    if not 1 <= score <= 10:
                        raise SheetError(f"{where}: score_1_10 must be 1-10, got {s}")
                out.append({"rater": (r.get("rater") or "").strip() or p.stem, "item": item,
                            "source_type": key[item]["source_type"], "source": key[item]["source"], "score": score,
                            "acceptable": _yn(r.get("acceptable_yes_no", ""), where + " acceptable_yes_no"),
                            "called_ai": _yn(r.get("made_by_ai_yes_no", ""), where + " made_by_ai_yes_no")})
    return out


def _median_iqr(v: list[float]) -> dict[str, float]:
    if not v:
        return {"n": 0, "median": math.nan, "q1": math.nan, "q3": math.nan}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": len(v), "median": float(med), "q1": float(q1), "q3": float(q3)}


def _pct(flags: list[bool]) -> dict[str, float]:
    return {"n": len(flags), "yes": int(sum(flags)), "percent": 100.0 * sum(flags) / len(flags) if flags else math.nan}


def _two_by_two(a_yes, a_n, b_yes, b_n) -> dict[str, Any]:
    from scipy.stats import chi2_contingency, fisher_exact

    table = np.array([[a_yes, a_n - a_yes], [b_yes, b_n - b_yes]])
    if a_n == 0 or b_n == 0 or (table.sum(axis=0) == 0).any():
        return {"test": "none (a row or column is empty)", "p_value": math.nan}
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    if (expected < 5).any():
        return {"test": "Fisher's exact (expected count < 5)", "p_value": float(fisher_exact(table)[1])}
    chi2, p, _, _ = chi2_contingency(table, correction=True)
    return {"test": "chi-square (Yates)", "statistic": float(chi2), "p_value": float(p)}


def score(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates over ``ratings`` (see module docstring); also per rater."""
    from scipy.stats import binomtest, mannwhitneyu

    g = defaultdict(list)
    for r in ratings:
        g[r["source_type"]].append(r)
    res: dict[str, Any] = {"n_ratings": len(ratings), "raters": sorted({r["rater"] for r in ratings}), "by_source": {}}
    for t in ("AI", "expert"):
        rs = g.get(t, [])
        res["by_source"][t] = {
            "score": _median_iqr([r["score"] for r in rs if r["score"] is not None]),
            "acceptable": _pct([r["acceptable"] for r in rs if r["acceptable"] is not None]),
            "called_ai": _pct([r["called_ai"] for r in rs if r["called_ai"] is not None]),
            "blank": {k: sum(r[k] is None for r in rs) for k in ("score", "acceptable", "called_ai")},
        }
    ai_s = [r["score"] for r in g.get("AI", []) if r["score"] is not None]
    ex_s = [r["score"] for r in g.get("expert", []) if r["score"] is not None]
    res["score_test"] = ({"test": "Mann-Whitney U (two-sided)", **dict(zip(("statistic", "p_value"), map(float, mannwhitneyu(ai_s, ex_s))))}
                         if ai_s and ex_s else {"test": "none (no scores for one group)", "p_value": math.nan})
    a, e = res["by_source"]["AI"]["acceptable"], res["by_source"]["expert"]["acceptable"]
    res["acceptable_test"] = _two_by_two(a["yes"], a["n"], e["yes"], e["n"])
    ca, ce = res["by_source"]["AI"]["called_ai"], res["by_source"]["expert"]["called_ai"]
    correct = ca["yes"] + (ce["n"] - ce["yes"])
    res["turing"] = {
        "ai_identified_percent": ca["percent"], "experts_called_ai_percent": ce["percent"],
        "accuracy_percent": 100.0 * correct / (ca["n"] + ce["n"]) if ca["n"] + ce["n"] else math.nan,
        "binomial_test": {"test": "exact binomial, AI identification rate vs 0.5 (two-sided)",
                          "p_value": float(binomtest(ca["yes"], ca["n"], 0.5).pvalue) if ca["n"] else math.nan},
        "association_test": _two_by_two(ca["yes"], ca["n"], ce["yes"], ce["n"]),
    }
    if len(res["raters"]) > 1:
        res["per_rater"] = {rt: {k: v for k, v in score([r for r in ratings if r["rater"] == rt]).items() if k in ("by_source", "turing")}
                            for rt in res["raters"]}
    return res


def summary_text(res: dict[str, Any]) -> str:
    """Human-readable aggregate table."""
    f = lambda x, d=1: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"  # noqa: E731
    lines = [f"{res['n_ratings']} ratings by {len(res['raters'])} rater(s): {', '.join(res['raters'])}",
             f"{'':8s}{'score median [IQR]':22s}{'acceptable':16s}{'called AI':12s}"]
    for t in ("AI", "expert"):
        b = res["by_source"][t]
        s = b["score"]
        lines.append(f"{t:8s}{f(s['median'])} [{f(s['q1'])}-{f(s['q3'])}] (n={s['n']})".ljust(30)
                     + f"{f(b['acceptable']['percent'])}% of {b['acceptable']['n']}".ljust(16)
                     + f"{f(b['called_ai']['percent'])}% of {b['called_ai']['n']}")
    t = res["turing"]
    lines += [f"score: {res['score_test']['test']} p={f(res['score_test']['p_value'], 4)}",
              f"acceptable: {res['acceptable_test']['test']} p={f(res['acceptable_test']['p_value'], 4)}",
              f"Turing: AI identified {f(t['ai_identified_percent'])}%, experts called AI {f(t['experts_called_ai_percent'])}%, "
              f"accuracy {f(t['accuracy_percent'])}%; {t['binomial_test']['test']} p={f(t['binomial_test']['p_value'], 4)}; "
              f"{t['association_test']['test']} p={f(t['association_test']['p_value'], 4)}"]
    return "\n".join(lines)
