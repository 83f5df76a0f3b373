"""Find and load a run's outputs (``runs/<name>/``, written by :mod:`plgg_fl.pipeline.run`).

What is read, and from where::

    config.yaml                        the resolved config (methods, sites, seeds, train settings)
    metrics.json                       stages (per-round per-site metrics), evaluation scalars per site/method
    checkpoints/<method>_<job>.pt      the models (gallery re-prediction)
    nvflare/evaluate/<job>/<site>/**/plgg_results/<job id>/<model>/<split>/per_case.csv
                                       per-case rows, written AT THE SITE by the evaluation job

Per-case rows never leave a site in a real federation. In the simulator every site's workspace lies
on one machine, so the report reads them all; at a real site, run the report's per-case parts on that
site's own ``plgg_results`` and share only aggregates.

The evaluation job files each model a site scored under its name (``stepwise/``, ``scratch/``, ...;
``model_<n>`` where the server sent none) with ``model.json`` (the name the server sent). The report
checks that label against the numbers: the folder's ``summary.json`` scalars must equal the scalars the
site sent for that method (``metrics.json`` ``evaluation[site][method]``). A unique numeric match wins
(a disagreeing label is noted), then the label. Results neither identifies are left out and noted,
never assigned by order; a second folder identifying as the same model is left out too.

The surface-Dice tolerance of each row is its ``nsd_tolerance_mm`` column; per-case files written
before that column existed take the ``nsd_tolerance_mm`` of the ``summary.json`` beside them, and
stay None (labelled "tolerance not recorded") when neither has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plgg_fl.engine.evaluate import read_rows
from plgg_fl.fl.protocol import scalar_metrics
from plgg_fl.errors import CommandError
from plgg_fl.pipeline.config import METHODS
from plgg_fl.pipeline.status import unfinished_reason


class ReportError(CommandError, RuntimeError):
    """A run folder the report cannot use (exit 2); ``file`` names the file or folder."""


@dataclass
class Run:
    """A run's outputs. ``per_case[(site, method)]`` = rows of ``per_case.csv`` (test split)."""

    root: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    per_case: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    per_case_paths: dict[tuple[str, str], Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.root.name)

    @property
    def methods(self) -> list[str]:
        """Evaluated methods, in :data:`plgg_fl.pipeline.config.METHODS` order (adult_only, scratch,
        transfer, stepwise, local_only[...], pooled), unknown names last."""
        out: list[str] = []
        for r in self.metrics.get("summary", []):
            if r["method"] not in out:
                out.append(r["method"])
        for per_site in self.metrics.get("evaluation", {}).values():
            out += [m for m in per_site if m not in out]
        known = list(METHODS)
        return sorted(out, key=lambda m: (known.index(m.split("[")[0]) if m.split("[")[0] in known else len(known), m))

    @property
    def sites(self) -> list[str]:
        """Evaluation sites (config order)."""
        return list((self.config.get("evaluate") or {}).get("sites") or sorted(self.metrics.get("evaluation", {})))

    @property
    def split(self) -> str:
        return str((self.config.get("evaluate") or {}).get("splits", "test")).split(",")[0]

    def cohort_dir(self) -> Path | None:
        """The synthetic cohort's folder: as written in the config (absolute, or relative to the current
        folder or to the run's grandparent), else None."""
        d = Path(str((self.config.get("cohort") or {}).get("dir", "")))
        for cand in (d, Path.cwd() / d, self.root.parent.parent / d, self.root.parent / d):
            if str(d) and cand.is_dir():
                return cand.resolve()
        return None

    def manifest(self, site: str) -> Path | None:
        c = self.cohort_dir()
        p = c / site / "manifest.yaml" if c else None
        return p if p and p.is_file() else None

    def model(self, method: str, ckpt: Path | None = None):
        """``(PlggUNet, TrainConfig)`` of ``method``'s checkpoint (or ``ckpt``): the checkpoint's own train
        config, as the model was trained and evaluated; the run's YAML (preset, stage-2 train options) for a
        checkpoint without one (an NVFlare global model). None when there is no such file."""
        from plgg_fl.engine import TrainConfig
        from plgg_fl.engine.checkpoint import model_and_config

        path = ckpt or self.checkpoint(method)
        if path is None or not path.is_file():
            return None
        train = ((self.config.get("stages") or {}).get("finetune") or {}).get("train") or {}
        return model_and_config(path, TrainConfig.from_overrides({**train, "preset": str(self.config.get("preset", "small"))}))

    def checkpoint(self, method: str) -> Path | None:
        """The checkpoint the evaluation scored for ``method`` (``metrics.json`` ``models`` if the pipeline
        records it, else derived from ``stages``: the method's last training job; ``transfer`` is the
        stepwise stage-2 model, ``adult_only`` the stage-1 model)."""
        rel = (self.metrics.get("models") or {}).get(method)
        if rel:
            return self.root / rel
        stages = self.metrics.get("stages", [])
        pick = {"adult_only": ("stage1", "pretrain"), "transfer": ("stepwise", "finetune")}.get(method)
        cands = [s for s in stages if "checkpoint" in s and (
            (pick and s["method"] == pick[0] and pick[1] in s["job"]) or (not pick and s["method"] == method))]
        return self.root / cands[-1]["checkpoint"] if cands else None

    def round_metrics(self) -> list[dict[str, Any]]:
        """Federated stages: ``[{"method", "job", "rounds": [{"round", "sites": {site: {metric: v}}}]}]``."""
        out = []
        for s in self.metrics.get("stages", []):
            if not s.get("rounds"):
                continue
            rounds = []
            for rec in s["rounds"]:
                sites = {x["name"]: {m["name"]: m["value"] for m in x.get("metrics", [])} for x in rec.get("sites", [])}
                rounds.append({"round": int(rec["round"]), "sites": sites})
            out.append({"method": s["method"], "job": s["job"], "rounds": rounds})
        return out


def _match(summary: dict[str, float], candidates: dict[str, dict[str, float]]) -> str | None:
    """The candidate method whose sent scalars agree with every shared key of ``summary`` (None if not unique)."""
    hits = []
    for method, sent in candidates.items():
        shared = [k for k in summary if k in sent]
        if shared and all(abs(summary[k] - sent[k]) <= 1e-9 * max(1.0, abs(sent[k])) for k in shared):
            hits.append(method)
    return hits[0] if len(hits) == 1 else None


def site_results(run_root: Path, site: str, split: str) -> list[Path]:
    """``<model>/<split>`` folders of the newest evaluation job at ``site`` (``<model>`` is the model's name,
    or ``model_<n>`` where the server sent none), sorted by folder."""
    base = run_root / "nvflare" / "evaluate"
    found = sorted(base.glob(f"*/{site}/**/plgg_results/*/*/{split}/per_case.csv")) if base.is_dir() else []
    if not found:
        return []
    newest = max(found, key=lambda p: p.stat().st_mtime).parent.parent.parent  # plgg_results/<job id>
    return sorted(p.parent for p in found if p.parent.parent.parent == newest)


def load_run(run_dir: str | Path, sites: list[str] | None = None) -> Run:
    """Read a run folder (only ``sites``' per-case results when given). Raises :class:`ReportError` when
    the run is still in progress, failed or was interrupted (``status.json``), config.yaml or
    metrics.json is missing, or a named site is not an evaluation site of the run."""
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise ReportError("no such run folder", root)
    why = unfinished_reason(root)
    if why:
        raise ReportError(f"{why}; a report needs a finished run", root)
    for f in ("config.yaml", "metrics.json"):
        if not (root / f).is_file():
            raise ReportError(f"not found (is {root} a finished `plgg-fl simulate` run?)", root / f)
    run = Run(root=root, config=yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {},
              metrics=json.loads((root / "metrics.json").read_text(encoding="utf-8")))
    evaluation = run.metrics.get("evaluation", {})
    if sites:
        unknown = sorted(set(sites) - set(run.sites))
        if unknown:
            raise ReportError(f"{unknown} not among the run's evaluation sites {run.sites}", root)
        run.config.setdefault("evaluate", {})["sites"] = [s for s in run.sites if s in sites]
    for site in run.sites:
        dirs = site_results(root, site, run.split)
        if not dirs:
            run.notes.append(f"{site}: no per-case results found under nvflare/evaluate/*/{site}/")
            continue
        sent = {m: v for m, v in evaluation.get(site, {}).items()}
        for d in dirs:
            summ = d / "summary.json"
            summary = json.loads(summ.read_text(encoding="utf-8")) if summ.is_file() else {}
            matched = _match(scalar_metrics(summary, f"{run.split}/", min_cases=0), sent) if summary else None
            label = d.parent / "model.json"  # written by the client: the model name the server sent
            named = json.loads(label.read_text(encoding="utf-8")).get("model") if label.is_file() else None
            if named and matched and named != matched:
                run.notes.append(f"{site}: {d.parent.name} is labelled {named!r} but its results match {matched!r}; using {matched!r}")
            method = matched or (named if named in sent or not sent else None)
            if method is None:  # never by order: results under the wrong name look right and are not
                run.notes.append(f"{site}: {d.parent.name} left out: neither its label ({named!r}) nor its scalars "
                                 "identify one of the run's models")
                continue
            if (site, method) in run.per_case:
                run.notes.append(f"{site}: {d.parent.name} also identifies as {method!r}; left out (first kept: "
                                 f"{run.per_case_paths[(site, method)].parent.parent.name})")
                continue
            rows = read_rows(d / "per_case.csv")
            tol = summary.get("nsd_tolerance_mm")
            for r in rows:
                if r.get("nsd_tolerance_mm") is None and isinstance(tol, (int, float)) and not isinstance(tol, bool):
                    r["nsd_tolerance_mm"] = float(tol)
            run.per_case[(site, method)] = rows
            run.per_case_paths[(site, method)] = d / "per_case.csv"
    return run
