"""Each method's final model as a self-contained engine checkpoint, for ``plgg-fl export`` / ``predict``.

NVFlare's persistor saves a global model as ``{"model": state_dict, ...}``: weights only, no preset,
no preprocessing. The pipeline knows both, so after a run it writes ``runs/<name>/models/<method>.pt``
with :func:`plgg_fl.engine.save_checkpoint` (weights, preset and its arguments, the TrainConfig the
sites trained with, preprocessing) and a ``meta`` naming the stages, sites and rounds behind it and the
scalar test metrics each site reported. ``plgg-fl export --model runs/<name>/models/stepwise.pt --out OUT`` then
gives a model for clinical inference with its model card filled in.
"""

from __future__ import annotations

from pathlib import Path


from plgg_fl.engine import PlggUNet, TrainConfig, save_checkpoint
from plgg_fl.engine.checkpoint import read_weights
from plgg_fl.pipeline.config import PipelineConfig

_S1 = ("stage1", "brats_pretrain")
#: the (pipeline method label, job) steps behind each method's final model, in order
CHAINS = {
    "adult_only": [_S1],
    "transfer": [_S1, ("stepwise", "plgg_finetune")],
    "stepwise": [_S1, ("stepwise", "plgg_finetune"), ("stepwise", "plgg_decoder")],
    "scratch": [("scratch", "plgg_finetune"), ("scratch", "plgg_decoder")],
}


def _chain(method: str) -> list[tuple[str, str]]:
    return CHAINS.get(method, [_S1, (method, "in_process")])  # pooled, local_only[<site>]: stage 1 + engine


def training_data(cfg: PipelineConfig, jobs: list[dict]) -> dict[str, str]:
    """``{site: what its data is}`` for every site of ``jobs`` (a stage 1 reused from a file says so)."""
    from plgg_fl.data.manifest import data_provenance

    out: dict[str, str] = {}
    for job in jobs:
        if job.get("reused"):
            out[f"{job['job']} (not trained in this run)"] = f"reused from {Path(job['reused']).name}"
            continue
        for site in job["sites"]:
            out.setdefault(site, data_provenance(cfg.cohort_dir / site / "manifest.yaml"))
    return out


def write_method_models(cfg: PipelineConfig, models: dict[str, Path], stages: list[dict], evaluation: dict,
                        out_dir: Path) -> dict[str, Path]:
    """Write ``out_dir/<method>.pt`` for every method in ``models``; returns method -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for method, path in models.items():
        state, train_cfg = read_weights(path)
        if train_cfg:  # an engine checkpoint's own, complete config
            tcfg = TrainConfig.from_dict(train_cfg)
        else:
            tcfg = TrainConfig.from_overrides({**cfg.stages["finetune"].options.train, "preset": cfg.preset})
        model = PlggUNet(preset=tcfg.preset)
        model.load_state_dict(state)
        chain = _chain(method)
        jobs = [{"job": s["job"], "sites": s["sites"], "rounds": len(s.get("rounds") or []), "wall_s": s.get("wall_s"),
                 **({"reused": s["reused"]} if s.get("reused") else {})}
                for step in chain for s in stages if (s["method"], s["job"]) == step]
        meta = {
            "method": method,
            "run": cfg.name,
            "jobs": jobs,
            "test_metrics": {site: {k: v for k, v in per.get(method, {}).items() if "dice" in k.lower()}
                             for site, per in evaluation.items()},
            "source_checkpoint": path.name,
            "training_data": training_data(cfg, jobs),
        }
        written[method] = save_checkpoint(out_dir / f"{method}.pt", model, tcfg, step=0, meta=meta)
    return written

