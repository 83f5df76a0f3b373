"""Stage 1 -> 2 -> 3 -> evaluation in the NVFlare simulator, plus the baselines, into ``runs/<name>/``
(``runs/<name>-2/``, ... when ``runs/<name>/`` holds an earlier run, unless ``overwrite``).

Outputs::

    runs/<name>/config.yaml                    the resolved config
    runs/<name>/checkpoints/<method>_<job>.pt  global models handed from stage to stage (NVFlare format:
                                               {"model": state_dict, ...}); local/pooled: engine format
    runs/<name>/logs/<method>/<job>/<site>.log every site's (and the server's) simulator log
    runs/<name>/sends/<job>/<site>.jsonl       what each site sent (with record_sends)
    runs/<name>/tensorboard/<method>/<job>/<site>/  per-round train_loss and val_dice each site streamed
                                               to the server (`tensorboard --logdir runs/<name>/tensorboard`)
    runs/<name>/models/<method>.pt             each method's final model as an engine checkpoint (preset,
                                               preprocessing, stages/sites/rounds and test Dice in meta):
                                               what `plgg-fl export` / `plgg-fl predict` take
    runs/<name>/metrics.json, metrics.csv      per-round training metrics and evaluation results
    runs/<name>/summary.txt                    the table printed at the end, then one row per method, test
                                               set and reference (each expert, inter-expert agreement)
    runs/<name>/status.json                    running | done | failed | interrupted (plgg_fl.pipeline.status)
    runs/<name>/nvflare/...                    the simulator workspaces

Handing on: a stage starts from the previous stage's *last* global model (``handoff: last``) or its
best by validation Dice (``handoff: best``; falls back to last when no round was selected). The
evaluation job scores every method's final model at every evaluation site in one NVFlare job.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from plgg_fl.fl import recipes
from plgg_fl.pipeline.config import PipelineConfig, dump_config
from plgg_fl.pipeline.models import write_method_models
from plgg_fl.pipeline.report import reference_table, summary_rows, summary_table
from plgg_fl.pipeline.simulate import StageFailed, check_evaluation, check_training, run_in_simulator
from plgg_fl.pipeline.status import clear_for_overwrite, run_folder, write_status

_BUILDERS = {"pretrain": recipes.pretrain_recipe, "finetune": recipes.finetune_recipe, "decoder": recipes.decoder_recipe}


def ensure_cohort(cfg: PipelineConfig, printer=print) -> dict[str, Path]:
    """Manifests of every site the config uses; synthesizes the cohort when any is missing."""
    manifests = {s: cfg.cohort_dir / s / "manifest.yaml" for s in cfg.sites}
    if not all(p.is_file() for p in manifests.values()):
        from plgg_fl.synth import generate_cohort

        printer(f"synthesizing the {cfg.cohort_size} cohort into {cfg.cohort_dir} (seed {cfg.cohort_seed}) ...")
        generate_cohort(cfg.cohort_dir, seed=cfg.cohort_seed, size=cfg.cohort_size, progress=True)
    missing = [str(p) for p in manifests.values() if not p.is_file()]
    if missing:
        raise StageFailed(f"cohort: manifest(s) missing after synthesis: {missing}")
    return {s: p.resolve() for s, p in manifests.items()}


class Pipeline:
    """One run of a config. ``run()`` returns the metrics dict also written to ``metrics.json``."""

    def __init__(self, cfg: PipelineConfig, out_root: str | Path = "runs", record_sends: bool = False, printer=print,
                 overwrite: bool = False):
        self.cfg, self.printer, self.overwrite = cfg, printer, overwrite
        self.out = run_folder(Path(out_root), cfg.name, overwrite).resolve()
        self.record_dir = self.out / "sends" if record_sends else None
        self.stages: list[dict] = []
        self.models: dict[str, Path] = {}
        self._pretrained_state = None  # a pretrained model read before --overwrite cleared its folder
        self.t0 = time.perf_counter()

    def _log(self, msg: str) -> None:
        self.printer(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}")

    def train_stage(self, method: str, stage: str, init: Path | None) -> Path:
        spec = self.cfg.stages[stage]
        recipe = _BUILDERS[stage](spec.options, sites=spec.sites, initial_ckpt=str(init) if init else None)
        o = spec.options
        self._log(
            f"{method}: {recipe.name} at {', '.join(spec.sites)} - {o.num_rounds} round(s) x {o.local_steps} steps"
            f"{' from ' + init.name if init else ' from random init'}"
        )
        res = run_in_simulator(recipe, spec.sites, self.out / "nvflare" / method, self.manifests, self.record_dir, self._progress,
                               self.cfg.job_timeout_s, self.cfg.gpu)
        self._keep_logs(method, res)
        check_training(res, o.num_rounds)
        src = res.best_model if self.cfg.handoff == "best" and res.best_model.is_file() else res.last_model
        dest = self.out / "checkpoints" / f"{method}_{recipe.name}.pt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        if res.best_model.is_file():
            shutil.copy2(res.best_model, dest.with_name(dest.stem + "_best.pt"))
        self.stages.append(
            {"method": method, "job": recipe.name, "sites": spec.sites, "wall_s": round(res.wall_s, 2),
             "handed_on": src.name, "checkpoint": str(dest.relative_to(self.out)), "rounds": res.round_metrics}
        )
        self._log(f"{method}: {recipe.name} done in {res.wall_s:.1f}s -> {dest.relative_to(self.out)}")
        return dest

    def use_pretrained(self, src: Path) -> Path:
        """Stage 1 not trained: ``src`` (any checkpoint format) is written as this run's stage-1 global model
        in NVFlare's format, where a trained one would be."""
        import torch

        from plgg_fl.engine.networks import parameter_shapes

        src = Path(src).resolve()
        state = self._pretrained_state if self._pretrained_state is not None else _read_pretrained(src)
        want = parameter_shapes(self.cfg.preset)
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
            raise StageFailed(f"pretrained: {src} is not a '{self.cfg.preset}' network (first differing keys: {bad[:3]})")
        dest = self.out / "checkpoints" / "stage1_brats_pretrain.pt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": state}, dest)
        self.stages.append({"method": "stage1", "job": "brats_pretrain", "sites": self.cfg.stages["pretrain"].sites,
                            "wall_s": 0.0, "reused": str(src), "checkpoint": str(dest.relative_to(self.out))})
        self._log(f"stage1: not trained; starting from {src}")
        return dest

    def _progress(self, line: str) -> None:
        self.printer(line)

    def _keep_logs(self, method: str, res) -> None:
        dest = self.out / "logs" / method / res.name
        dest.mkdir(parents=True, exist_ok=True)
        for site in [*res.sites, "server"]:
            log = res.workspace / site / "log.txt"
            if log.is_file():
                shutil.copy2(log, dest / f"{site}.log")
        tb = res.workspace / "server" / "simulate_job" / "tb_events"  # what the sites streamed to the server
        if tb.is_dir():
            shutil.copytree(tb, self.out / "tensorboard" / method / res.name, dirs_exist_ok=True)

    def train_local(self, label: str, sites: list[str]) -> Path:
        """Stage 2 + 3 budgets run in-process through the engine on ``sites``' pooled training cases."""
        from plgg_fl.pipeline.local import train_local

        self._log(f"{label}: in-process stage-2+3 budget on {', '.join(sites)}'s training cases")
        t = time.perf_counter()
        path = train_local(self.cfg, self.models["adult_only_init"], {s: self.manifests[s] for s in sites},
                           self.out / "checkpoints" / f"{label}.pt")
        self.stages.append({"method": label, "job": "in_process", "sites": sites, "wall_s": round(time.perf_counter() - t, 2),
                            "checkpoint": str(path.relative_to(self.out))})
        return path

    def evaluate(self) -> dict:
        finals = {m: p for m, p in self.models.items() if m != "adult_only_init"}
        recipe = recipes.evaluate_recipe(
            self.cfg.preset, sites=self.cfg.eval_sites, models={m: str(p) for m, p in finals.items()},
            train=self.cfg.stages["finetune"].options.train, eval_splits=self.cfg.eval_splits,
        )
        self._log(f"evaluation of {len(finals)} model(s) ({', '.join(finals)}) at {', '.join(self.cfg.eval_sites)} "
                  f"on '{self.cfg.eval_splits}'")
        res = run_in_simulator(recipe, self.cfg.eval_sites, self.out / "nvflare" / "evaluate", self.manifests,
                               self.record_dir, self._progress, self.cfg.job_timeout_s, self.cfg.gpu)
        self._keep_logs("evaluate", res)
        check_evaluation(res, list(finals))
        self.stages.append({"method": "evaluate", "job": recipe.name, "sites": self.cfg.eval_sites, "wall_s": round(res.wall_s, 2)})
        return res.eval_results

    def run(self) -> dict:
        """The whole run; ``status.json`` says running, then done, failed or interrupted."""
        self._pretrained_state = None
        if self.overwrite and self.cfg.pretrained and self.out in Path(self.cfg.pretrained).resolve().parents:
            # the stage-1 model lies in the folder --overwrite clears: read it first
            self._pretrained_state = _read_pretrained(Path(self.cfg.pretrained).resolve())
        if self.overwrite:
            clear_for_overwrite(self.out)
        if self.out.name != self.cfg.name:
            self.printer(f"{self.out.with_name(self.cfg.name)} holds an earlier run; this run writes to {self.out} "
                         "(--overwrite replaces the earlier one)")
        self.out.mkdir(parents=True, exist_ok=True)
        write_status(self.out, "running")
        try:
            metrics = self._run()
        except KeyboardInterrupt as exc:
            from plgg_fl.errors import interrupt_name

            write_status(self.out, "interrupted", f"stopped by {interrupt_name(exc)}")
            raise
        except BaseException as exc:
            write_status(self.out, "failed", (str(exc).splitlines() or [type(exc).__name__])[0])
            raise
        write_status(self.out, "done")
        return metrics

    def _train_methods(self) -> None:
        cfg, methods = self.cfg, self.cfg.methods
        if set(methods) & {"adult_only", "transfer", "stepwise", "local_only", "pooled"}:
            s1 = self.use_pretrained(cfg.pretrained) if cfg.pretrained else self.train_stage("stage1", "pretrain", None)
            self.models["adult_only_init"] = s1
            if "adult_only" in methods:
                self.models["adult_only"] = s1
        if {"transfer", "stepwise"} & set(methods):
            s2 = self.train_stage("stepwise", "finetune", self.models["adult_only_init"])
            if "transfer" in methods:
                self.models["transfer"] = s2
            if "stepwise" in methods:
                self.models["stepwise"] = self.train_stage("stepwise", "decoder", s2)
        if "scratch" in methods:
            self.models["scratch"] = self.train_stage("scratch", "decoder", self.train_stage("scratch", "finetune", None))
        if "local_only" in methods:
            for site in cfg.stages["finetune"].sites:
                self.models[f"local_only[{site}]"] = self.train_local(f"local_only[{site}]", [site])
        if "pooled" in methods:
            self.models["pooled"] = self.train_local("pooled", cfg.stages["finetune"].sites)

    def _run(self) -> dict:
        cfg = self.cfg
        (self.out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        self.manifests = ensure_cohort(cfg, self.printer)
        self._train_methods()
        evaluation = self.evaluate()
        finals = {m: p for m, p in self.models.items() if m != "adult_only_init"}
        models = write_method_models(cfg, finals, self.stages, evaluation, self.out / "models")
        rows = summary_rows(evaluation, list(finals))
        metrics = {"name": cfg.name, "wall_s": round(time.perf_counter() - self.t0, 2), "stages": self.stages,
                   "evaluation": evaluation, "summary": rows,
                   "models": {m: str(p.relative_to(self.out)) for m, p in models.items()}}
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
        _write_metrics_csv(self.out / "metrics.csv", evaluation)
        table = summary_table(rows, cfg.eval_sites)
        (self.out / "summary.txt").write_text(table + "\n\n" + reference_table(rows, cfg.eval_sites) + "\n", encoding="utf-8")
        self._log(f"done: {self.out}")
        self.printer(table)
        self.printer(f"\nstudy report (tables, plots, failure gallery): plgg-fl report {_shown(self.out)}")
        return metrics


def _read_pretrained(src: Path) -> dict:
    """The state dict of a stage-1 checkpoint (any format); :class:`StageFailed` saying why not."""
    from plgg_fl.engine.checkpoint import read_weights

    if not src.is_file():
        raise StageFailed(f"pretrained: stage-1 checkpoint not found: {src}")
    try:
        return read_weights(src)[0]
    except (ValueError, RuntimeError, OSError) as exc:
        raise StageFailed(f"pretrained: {src} is not a model checkpoint ({exc})") from exc


def _write_metrics_csv(path: Path, evaluation: dict) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", "method", "metric", "value"])
        for site, per_model in evaluation.items():
            for method, values in per_model.items():
                for k, v in sorted(values.items()):
                    w.writerow([site, method, k, v])


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is below it (what a user would type)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
