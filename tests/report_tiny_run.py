"""One small real run for the report tests: the tiny pipeline (stage 1 -> 2 -> 3 and scratch in the NVFlare
simulator) into a temporary folder.

Evaluation: by default the pipeline's own NVFlare evaluation job. With ``PLGG_REPORT_INPROCESS_EVAL=1`` the
sites' evaluation is done in-process instead, with the same engine call the client script makes
(``evaluate_cases`` on each site's usable test cases, every method's final checkpoint, per-case rows into
``<site workspace>/plgg_results/<job>/model_<n>/test/``, labelled by ``model_<n>/model.json``) - a stand-in while the evaluation job cannot run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from plgg_fl.pipeline.config import load_config
from plgg_fl.pipeline.run import Pipeline

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["adult_only", "scratch", "stepwise"]


def _flatten(summary: dict, prefix: str = "") -> dict[str, float]:
    import math

    out = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


class InProcessEvalPipeline(Pipeline):
    """The pipeline with the evaluation job replaced by what each site's client does for it."""

    def evaluate(self) -> dict:
        from plgg_fl.data.manifest import load_manifest
        from plgg_fl.data.validate import usable_cases
        from plgg_fl.engine import PlggUNet, TrainConfig, evaluate_cases
        from plgg_fl.fl.locator import read_state_dict

        cfg = self.cfg
        tcfg = TrainConfig.from_overrides({**cfg.stages["finetune"].options.train, "preset": cfg.preset})
        finals = {m: p for m, p in self.models.items() if m != "adult_only_init"}
        out: dict = {}
        for site in cfg.eval_sites:
            cases = usable_cases(load_manifest(self.manifests[site]), "test")
            ws = self.out / "nvflare" / "evaluate" / "plgg_evaluate" / site / "plgg_results" / "simulate_job"
            for n, (method, ckpt) in enumerate(finals.items(), start=1):
                model = PlggUNet(preset=cfg.preset)
                model.load_state_dict(read_state_dict(str(ckpt)))
                (ws / f"model_{n}").mkdir(parents=True, exist_ok=True)
                (ws / f"model_{n}" / "model.json").write_text(json.dumps({"model": method, "order": n}), encoding="utf-8")
                _, summary = evaluate_cases(model, cases, tcfg, out_dir=ws / f"model_{n}" / "test", progress=False)
                out.setdefault(site, {})[method] = _flatten(summary, "test/")
        self.stages.append({"method": "evaluate", "job": "in_process", "sites": cfg.eval_sites, "wall_s": 0.0})
        return out


def run_tiny(tmp: Path, methods=METHODS) -> Path:
    """Run the tiny config into ``tmp/runs/tiny`` (cohort in ``tmp/cohort``); returns the run folder."""
    cfg = load_config(ROOT / "simulator_configs" / "tiny.yaml")
    cfg.cohort_dir = (tmp / "cohort").resolve()
    cfg.methods = list(methods)
    cls = InProcessEvalPipeline if os.environ.get("PLGG_REPORT_INPROCESS_EVAL") == "1" else Pipeline
    p = cls(cfg, out_root=tmp / "runs", printer=lambda s: None)
    # the report matches model folders to the statistics the sites sent; the tiny test sets (2 cases)
    # are below a site's default minimum for sending them (counts only: tests/test_pipeline_tiny.py)
    old = os.environ.get("PLGG_FL_MIN_SUMMARY_CASES")
    os.environ["PLGG_FL_MIN_SUMMARY_CASES"] = "1"
    try:
        p.run()
    finally:
        if old is None:
            os.environ.pop("PLGG_FL_MIN_SUMMARY_CASES")
        else:
            os.environ["PLGG_FL_MIN_SUMMARY_CASES"] = old
    return p.out
