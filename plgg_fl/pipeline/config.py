"""Simulator pipeline configuration: one YAML names the cohort, the model, each stage and the methods.

Example (``simulator_configs/tiny.yaml``)::

    name: tiny                       # output folder runs/<name>/
    cohort: {dir: runs/cohorts/tiny, size: tiny, seed: 0}   # synthesized there when absent
    preset: tiny                     # PlggUNet preset
    train: {patch_size: [32, 32, 32], batch_size: 1}       # TrainConfig overrides, every site/stage
    stages:
      pretrain: {sites: [brats], num_rounds: 1, local_steps: 2}
      finetune: {sites: [cbtn, dfci_bch], num_rounds: 1, local_steps: 2}
      decoder:  {sites: [cbtn, dfci_bch], num_rounds: 1, local_steps: 2}
    evaluate: {sites: [cbtn, dfci_bch], splits: test}
    handoff: last                    # which global model a stage hands on: last | best (by val Dice)
    job_timeout_s: 600               # a simulator job running longer is stopped and reported
    gpu: "0"                         # optional: NVFlare SimEnv gpu_config; clients use cuda when set
    methods: [stepwise, adult_only]  # see METHODS
    pretrained: runs/demo/checkpoints/stage1_brats_pretrain.pt  # optional: a stage-1 global model to start
                                     # from instead of training stage 1 (NVFlare or engine checkpoint)

A stage entry takes the :class:`plgg_fl.fl.options.StageOptions` fields (``num_rounds``,
``local_steps``, ``send``, ``fedprox_mu``, ``privacy``, ``train``) plus ``sites``. Relative paths are
relative to the current folder. ``dfci_bch`` becomes an evaluation-only (external) site by leaving
it out of the training stages' ``sites``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plgg_fl.errors import CommandError
from plgg_fl.fl.options import StageOptions
from plgg_fl.fl.protocol import STAGE_KEYS

#: The compared methods (Boyd et al. 2024 plus the two non-federated references).
METHODS = {
    "adult_only": "stage-1 (adult BraTS) model applied to children",
    "scratch": "stages 2+3 from random initialisation (same budget)",
    "transfer": "stage 2 only: full fine-tuning of the stage-1 model",
    "stepwise": "stage 1 -> 2 -> 3 (the method)",
    "local_only": "each pediatric training site alone, stage 1 -> 2 -> 3 budget, no federation",
    "pooled": "all pediatric training data in one place, stage 1 -> 2 -> 3 budget (simulation-only bound)",
}
STAGES = STAGE_KEYS  # every config names each (plgg_fl.fl.protocol)
_TOP = {"gpu", "job_timeout_s", "name", "cohort", "preset", "train", "stages", "evaluate", "handoff", "methods", "description", "pretrained"}


class ConfigError(CommandError, ValueError):
    """A simulator config that cannot run; the message names the field, ``file`` the config."""


def check_methods(methods: list[str], origin: str | None = None) -> list[str]:
    """``methods`` without repeats; :class:`ConfigError` listing the valid names if one is unknown."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method(s) {', '.join(map(repr, bad))}; valid: {', '.join(METHODS)}", origin)
    return list(dict.fromkeys(methods))


@dataclass
class StageSpec:
    sites: list[str]
    options: StageOptions

    @property
    def total_steps(self) -> int:
        """Optimiser steps each site takes over the whole stage."""
        return self.options.num_rounds * self.options.local_steps


@dataclass
class PipelineConfig:
    name: str
    cohort_dir: Path
    cohort_size: str = "tiny"
    cohort_seed: int = 0
    preset: str = "small"
    train: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageSpec] = field(default_factory=dict)
    eval_sites: list[str] = field(default_factory=lambda: ["cbtn", "dfci_bch"])
    eval_splits: str = "test"
    handoff: str = "last"
    methods: list[str] = field(default_factory=lambda: ["stepwise"])
    job_timeout_s: float = 1800.0  # a simulator job running longer is stopped and reported
    gpu: str | None = None  # SimEnv gpu_config, e.g. "0" or "0,1" (clients spread over the GPUs); None = CPU
    pretrained: Path | None = None  # a stage-1 model used instead of training stage 1
    source: str = ""

    @property
    def sites(self) -> list[str]:
        """Every site any stage or the evaluation uses."""
        out: list[str] = []
        for s in [*(x for st in self.stages.values() for x in st.sites), *self.eval_sites]:
            if s not in out:
                out.append(s)
        return out


def _stage(name: str, raw: Any, preset: str, train: dict, origin: str) -> StageSpec:
    if not isinstance(raw, dict) or not raw.get("sites"):
        raise ConfigError(f"stages.{name} must be a mapping with a non-empty 'sites' list", origin)
    raw = dict(raw)
    sites = [str(s) for s in raw.pop("sites")]
    stage_train = {**train, **(raw.pop("train", None) or {})}
    try:
        opts = StageOptions.from_dict({**raw, "preset": preset, "train": stage_train})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"stages.{name}: {exc}", origin) from exc
    # the poly LR schedule spans the stage unless the config says otherwise
    opts.train.setdefault("max_steps", opts.num_rounds * opts.local_steps)
    return StageSpec(sites=sites, options=opts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping. Raises :class:`ConfigError` when it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", path) from exc
    if not isinstance(data, dict):
        raise ConfigError("a config is a YAML mapping (name, cohort, stages, ...)", path)
    return data


def load_config(path: str | Path) -> PipelineConfig:
    """Read and check a simulator config. Raises :class:`ConfigError` naming the problem."""
    return config_from_dict(read_yaml(path), str(path), Path(path).stem)


def config_from_dict(data: dict[str, Any], origin: str, default_name: str = "run") -> PipelineConfig:
    """Check a config mapping (as read from YAML); ``origin`` names it in errors. Raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError("a config is a YAML mapping (name, cohort, stages, ...)", origin)
    if "base" in data and "stages" not in data:
        raise ConfigError("this is a study config (it names a 'base'); run it with `plgg-fl study --config ...`", origin)
    if "seed" in data:  # read nowhere before: a run that looked seeded was not
        raise ConfigError("a top-level 'seed' sets nothing; use train.seed (initial weights, patch sampling) "
                          "or cohort.seed (the synthetic cohort)", origin)
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)}; known: {sorted(_TOP)}", origin)
    cohort = data.get("cohort") or {}
    preset = str(data.get("preset", "small"))
    train = dict(data.get("train") or {})
    stages_raw = data.get("stages") or {}
    missing = [s for s in STAGES if s not in stages_raw]
    if missing:
        raise ConfigError(f"stages {missing} missing; every config names {list(STAGES)}", origin)
    stages = {name: _stage(name, stages_raw[name], preset, train, origin) for name in STAGES}
    ev = data.get("evaluate") or {}
    methods = check_methods(list(data.get("methods") or ["stepwise"]), origin)
    for name, spec in stages.items():
        if spec.options.quantize == "blockwise8" and data.get("gpu") is None:
            raise ConfigError(f"stages.{name}.quantize: blockwise8 runs on CUDA only (NVFlare 2.9's ModelQuantizer); "
                              "set gpu, or use float16", origin)
    handoff = data.get("handoff", "last")
    if handoff not in ("last", "best"):
        raise ConfigError(f"handoff must be 'last' or 'best', got {handoff!r}", origin)
    return PipelineConfig(
        name=str(data.get("name") or default_name),
        cohort_dir=Path(cohort.get("dir", f"runs/cohorts/{default_name}")),
        cohort_size=str(cohort.get("size", "tiny")),
        cohort_seed=int(cohort.get("seed", 0)),
        preset=preset,
        train=train,
        stages=stages,
        eval_sites=[str(s) for s in ev.get("sites", ["cbtn", "dfci_bch"])],
        eval_splits=str(ev.get("splits", "test")),
        handoff=handoff,
        methods=methods,
        job_timeout_s=float(data.get("job_timeout_s", 1800.0)),
        gpu=None if data.get("gpu") is None else str(data["gpu"]),
        pretrained=None if data.get("pretrained") is None else Path(str(data["pretrained"])),
        source=origin,
    )


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (written next to the run's outputs as ``config.yaml``); reading it back
    with :func:`config_from_dict` gives the same config (``source`` aside)."""
    stages = {n: {"sites": s.sites, **s.options.to_dict()} for n, s in cfg.stages.items()}
    data = {
        "name": cfg.name,
        "cohort": {"dir": str(cfg.cohort_dir), "size": cfg.cohort_size, "seed": cfg.cohort_seed},
        "preset": cfg.preset,
        "train": cfg.train,
        "stages": stages,
        "evaluate": {"sites": cfg.eval_sites, "splits": cfg.eval_splits},
        "handoff": cfg.handoff,
        "methods": cfg.methods,
        "job_timeout_s": cfg.job_timeout_s,
    }
    if cfg.gpu is not None:
        data["gpu"] = cfg.gpu
    if cfg.pretrained is not None:
        data["pretrained"] = str(cfg.pretrained)
    return yaml.safe_dump(data, sort_keys=False)
