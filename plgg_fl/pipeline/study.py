"""A study: one pipeline config run with several training seeds, plus a data-limited learning curve.

Config (``simulator_configs/study.yaml``)::

    name: study                      # output folder runs/<name>/
    base: demo                       # the pipeline config every run starts from (name or path)
    seeds: [0, 1, 2]                 # training seeds (TrainConfig.seed: initial weights, patch sampling)
    methods: [adult_only, local_only, scratch, transfer, stepwise, pooled]
    curve:                           # optional data-limited curve
      site: cbtn                     # whose training split is subset
      train_cases: [5, 10, 20]       # nested subsets (5 of the 10, 10 of the 20)
      train_sites: [cbtn]            # who trains stages 2 and 3 in the curve runs (others: evaluation only)
      methods: [scratch, transfer, stepwise]
      seeds: [0, 1, 2]               # default: the study's seeds
      subset_seed: 0                 # which cases make up a subset (the same for every training seed)

The cohort is the base config's, identical in every run (never re-synthesized per seed). The seed
is set in the base's ``train`` block; a stage-level ``train: {seed: ...}`` in the base config would
override it for that stage (the study's base configs set none). A curve run
of seed ``s`` starts from the stage-1 model of the main run of seed ``s`` (``pretrained``), so the
curve isolates stages 2 and 3; the subset manifests are written under ``runs/<name>/cohorts/``.

Outputs::

    runs/<name>/study.json             the plan, each run's folder, state and wall time (rewritten after every run)
    runs/<name>/seed<s>/               a pipeline run (plgg_fl.pipeline.run) per seed
    runs/<name>/curve_n<N>_seed<s>/    a pipeline run per curve point and seed
    runs/<name>/cohorts/<site>_n<N>/   the subset cohorts' manifests (paths point at the base cohort's files)

A run folder whose ``status.json`` says done and whose ``config.yaml`` equals the planned config is
kept, so a study interrupted part-way continues where it stopped. The statistics and the HTML are
:mod:`plgg_fl.report.study`'s (``plgg-fl study`` runs both).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from plgg_fl.data.manifest import load_manifest, write_manifest
from plgg_fl.pipeline.config import (
    ConfigError, PipelineConfig, check_methods, config_from_dict, dump_config, read_yaml,
)
from plgg_fl.pipeline.status import read_status

_TOP = {"name", "base", "seeds", "methods", "curve", "description"}
_CURVE = {"site", "train_cases", "train_sites", "methods", "seeds", "subset_seed"}
STUDY_FILE = "study.json"


@dataclass
class CurveSpec:
    """The data-limited curve: ``train_cases`` of ``site``'s training split, ``train_sites`` training."""

    site: str
    train_cases: list[int]
    train_sites: list[str]
    methods: list[str]
    seeds: list[int]
    subset_seed: int = 0


@dataclass
class StudyConfig:
    name: str
    base: Path
    seeds: list[int]
    methods: list[str]
    curve: CurveSpec | None = None
    source: str = ""


@dataclass
class StudyRun:
    """One pipeline run of the study. ``train_cases`` None = the base cohort's full training split."""

    name: str
    kind: str  # "seeds" | "curve"
    seed: int
    methods: list[str]
    train_cases: int | None = None
    train_sites: list[str] = field(default_factory=list)


def _ints(raw: Any, what: str, origin: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise ConfigError(f"{what} must be a non-empty list of integers, got {raw!r}", origin)
    return list(dict.fromkeys(raw))


def load_study(path: str | Path, find_config: Callable[[str], Path]) -> StudyConfig:
    """Read and check a study config; ``find_config`` resolves ``base`` (a config name or path)."""
    origin = str(path)
    data = read_yaml(path)
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)}; known: {sorted(_TOP)}", origin)
    if not data.get("base"):
        raise ConfigError("'base' (the pipeline config every run starts from) is required", origin)
    base = find_config(str(data["base"]))
    base_methods = config_from_dict(read_yaml(base), str(base), base.stem).methods
    seeds = _ints(data.get("seeds", [0]), "seeds", origin)
    methods = check_methods(list(data.get("methods") or base_methods), origin)
    curve = None
    if data.get("curve"):
        c = data["curve"]
        if not isinstance(c, dict):
            raise ConfigError("curve must be a mapping (site, train_cases, ...)", origin)
        bad = set(c) - _CURVE
        if bad:
            raise ConfigError(f"curve: unknown field(s) {sorted(bad)}; known: {sorted(_CURVE)}", origin)
        site = str(c.get("site", "cbtn"))
        n = _ints(c.get("train_cases"), "curve.train_cases", origin)
        if min(n) < 1:
            raise ConfigError(f"curve.train_cases must be >= 1, got {n}", origin)
        curve = CurveSpec(site=site, train_cases=sorted(n), train_sites=[str(s) for s in c.get("train_sites") or [site]],
                          methods=check_methods(list(c.get("methods") or ["scratch", "transfer", "stepwise"]), origin),
                          seeds=_ints(c.get("seeds", seeds), "curve.seeds", origin), subset_seed=int(c.get("subset_seed", 0)))
        if site not in curve.train_sites:
            raise ConfigError(f"curve.site {site!r} must be one of curve.train_sites {curve.train_sites}", origin)
        if set(curve.methods) & {"local_only", "pooled"}:
            raise ConfigError("curve.methods: local_only and pooled train on every site's full split; use scratch, "
                              "transfer, stepwise, adult_only", origin)
    return StudyConfig(name=str(data.get("name") or Path(path).stem), base=base, seeds=seeds, methods=methods,
                       curve=curve, source=origin)


def plan(study: StudyConfig) -> list[StudyRun]:
    """Main runs (one per seed) first, then the curve runs (per subset size, per seed)."""
    runs = [StudyRun(f"seed{s}", "seeds", s, study.methods) for s in study.seeds]
    if study.curve:
        c = study.curve
        runs += [StudyRun(f"curve_n{n:02d}_seed{s}", "curve", s, c.methods, n, c.train_sites)
                 for n in c.train_cases for s in c.seeds]
    return runs


def subset_keys(manifest_path: Path, n: int, subset_seed: int) -> list[str]:
    """The first ``n`` training case keys in a fixed seeded order (so smaller subsets nest in larger ones)."""
    keys = sorted(c.key for c in load_manifest(manifest_path).split("train"))
    if n > len(keys):
        raise ConfigError(f"curve.train_cases {n} > the {len(keys)} training cases in {manifest_path}")
    order = np.random.default_rng(subset_seed).permutation(len(keys))
    return [keys[i] for i in order[:n]]


def write_subset_cohort(base: PipelineConfig, site: str, keys: list[str], dest: Path) -> Path:
    """A cohort folder whose ``site`` manifest keeps only ``keys`` of its training split (val and test
    unchanged) and whose other manifests are the base's; image paths point at the base cohort's files."""
    for s in base.sites:
        m = load_manifest(base.cohort_dir / s / "manifest.yaml")
        if s == site:
            m = dataclasses.replace(m, cases=[c for c in m.cases if c.split != "train" or c.key in keys])
        write_manifest(m, dest / s / "manifest.yaml")
    return dest


class Study:
    """Runs every planned pipeline run into ``out_root/<name>/``; ``run()`` returns ``study.json``'s content."""

    def __init__(self, study: StudyConfig, out_root: str | Path = "runs", printer=print):
        self.study, self.printer = study, printer
        self.out = (Path(out_root) / study.name).resolve()
        self.base_data = read_yaml(study.base)
        self.base = config_from_dict(self.base_data, str(study.base), study.base.stem)
        self.runs = plan(study)
        self.record: dict[str, Any] = {"name": study.name, "config": study.source, "base": str(study.base),
                                       "seeds": study.seeds, "methods": study.methods,
                                       "curve": dataclasses.asdict(study.curve) if study.curve else None, "runs": []}

    def run_config(self, r: StudyRun) -> PipelineConfig:
        """The base config with this run's name, seed, methods and (curve) cohort, training sites and stage 1."""
        data = json.loads(json.dumps(self.base_data))  # a deep copy of plain YAML data
        data["name"] = r.name
        data["train"] = {**(data.get("train") or {}), "seed": r.seed}
        data["methods"] = r.methods
        # every run reads the base cohort (or a subset of it): never one synthesized per run
        data["cohort"] = {**(data.get("cohort") or {}), "dir": str(self.base.cohort_dir)}
        if r.kind == "curve":
            c = self.study.curve
            data["cohort"] = {**(data.get("cohort") or {}), "dir": str(self.out / "cohorts" / f"{c.site}_n{r.train_cases:02d}")}
            for stage in ("finetune", "decoder"):
                data["stages"][stage] = {**data["stages"][stage], "sites": r.train_sites}
            s1 = self.out / f"seed{r.seed}" / "checkpoints" / "stage1_brats_pretrain.pt"
            if r.seed in self.study.seeds and set(self.study.methods) & {"adult_only", "transfer", "stepwise", "local_only", "pooled"}:
                data["pretrained"] = str(s1)
        return config_from_dict(data, f"{self.study.source} ({r.name})", r.name)

    def _done(self, folder: Path, cfg: PipelineConfig) -> bool:
        st = read_status(folder)
        cfg_file = folder / "config.yaml"
        return bool(st and st.get("state") == "done" and cfg_file.is_file()
                    and cfg_file.read_text(encoding="utf-8") == dump_config(cfg))

    def _earlier_walls(self) -> dict[str, float]:
        """Wall times of runs an earlier invocation finished (kept runs keep their time)."""
        try:
            old = json.loads((self.out / STUDY_FILE).read_text(encoding="utf-8"))
            return {r["name"]: r["wall_s"] for r in old.get("runs", []) if r.get("state") == "done" and "wall_s" in r}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (STUDY_FILE + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1), encoding="utf-8")
        tmp.replace(self.out / STUDY_FILE)

    def run(self) -> dict[str, Any]:
        from plgg_fl.pipeline.run import Pipeline, ensure_cohort

        t0 = time.perf_counter()
        ensure_cohort(self.base, self.printer)
        if self.study.curve:
            c = self.study.curve
            for n in c.train_cases:
                keys = subset_keys(self.base.cohort_dir / c.site / "manifest.yaml", n, c.subset_seed)
                write_subset_cohort(self.base, c.site, keys, self.out / "cohorts" / f"{c.site}_n{n:02d}")
        earlier = self._earlier_walls()
        self.record["runs"] = [{**dataclasses.asdict(r), "folder": r.name, "state": "planned",
                                **({"wall_s": earlier[r.name]} if r.name in earlier else {})} for r in self.runs]
        self._save()
        for i, (r, rec) in enumerate(zip(self.runs, self.record["runs"]), 1):
            cfg = self.run_config(r)
            folder = self.out / r.name
            what = f"seed {r.seed}" + (f", {r.train_cases} {self.study.curve.site} training cases" if r.train_cases else "")
            if self._done(folder, cfg):
                self.printer(f"[study {i}/{len(self.runs)}] {r.name} ({what}): done earlier, kept")
                rec["state"] = "done"
                continue
            elapsed = time.perf_counter() - t0
            self.printer(f"[study {i}/{len(self.runs)}] {r.name} ({what}; methods {', '.join(r.methods)}); "
                         f"{elapsed / 60:.1f} min so far")
            rec["state"] = "running"
            self._save()
            t = time.perf_counter()
            try:
                Pipeline(cfg, out_root=self.out, printer=self.printer, overwrite=True).run()
            except KeyboardInterrupt:
                rec["state"] = "interrupted"
                self._save()
                raise
            except BaseException:
                rec["state"] = "failed"
                self._save()
                raise
            rec.update(state="done", wall_s=round(time.perf_counter() - t, 1))
            self.record["wall_s"] = round(time.perf_counter() - t0, 1)
            self._save()
        self.record["wall_s"] = round(time.perf_counter() - t0, 1)
        self._save()
        return self.record
