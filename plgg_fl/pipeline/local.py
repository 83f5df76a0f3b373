"""Non-federated references, in-process through the engine: the stage-2 then stage-3 budget (steps a
federated site takes: rounds x local steps) on one site's training cases (local-only) or on the
pooled training cases of all pediatric sites (pooled; a simulation-only upper bound)."""

from __future__ import annotations

from pathlib import Path

from plgg_fl.data.manifest import load_manifest
from plgg_fl.data.validate import usable_cases
from plgg_fl.engine import PlggUNet, TrainConfig, Trainer, save_checkpoint
from plgg_fl.engine.checkpoint import read_weights
from plgg_fl.pipeline.config import PipelineConfig
from plgg_fl.pipeline.simulate import threads_per_client


def train_local(cfg: PipelineConfig, init_ckpt: Path, manifests: dict[str, Path], out: Path) -> Path:
    """Stage 1 weights -> full fine-tuning -> decoder fine-tuning on ``manifests``' train cases.
    Writes an engine checkpoint at ``out`` and returns it."""
    import torch

    # nothing else runs meanwhile: every core (the budget that is compared is steps, not threads)
    torch.set_num_threads(threads_per_client(1))
    cases = [c for p in manifests.values() for c in usable_cases(load_manifest(p), "train")]
    model = PlggUNet(preset=cfg.preset)
    model.load_state_dict(read_weights(init_ckpt)[0])
    step = 0
    for stage, frozen in (("finetune", False), ("decoder", True)):
        opts = cfg.stages[stage].options
        tcfg = TrainConfig.from_overrides({**opts.train, "preset": cfg.preset})
        trainer = Trainer(model, tcfg, cases, freeze_encoder=frozen, progress=False)
        trainer.train_steps(opts.num_rounds * opts.local_steps, progress=False)
        step += trainer.step
    return save_checkpoint(out, model, tcfg, step=step, meta={"sites": sorted(manifests), "method": "in_process"})
