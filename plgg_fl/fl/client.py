"""NVFlare client script (Client API) around the engine: one process per site, one Trainer across rounds.

Tasks handled (every task NVFlare's FedAvg / GlobalModelEval workflows send):

* ``train``        - load the global weights, validate them on the site's ``val`` split (``val_dice``:
  what the server's model selector keeps the best global model by), train ``--local-steps``
  optimiser steps, send the weights (stage 3: decoder keys only), optionally as differences.
* ``validate``     - score the received model on ``--eval-splits`` against every reference; per-case
  rows stay at the site (``<workspace>/plgg_results/<job>/``), only scalar summaries are sent.
* ``submit_model`` - send the site's current weights.

The site's data is found at the site (:mod:`plgg_fl.fl.site`); the job passes only plain training
settings (``--set key=value``, values parsed as YAML).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import nvflare.client as flare
from nvflare.client.tracking import SummaryWriter
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AlgorithmConstants
from plgg_fl.data.manifest import load_manifest
from plgg_fl.data.validate import usable_cases
from plgg_fl.engine import PlggUNet, TrainConfig, encoder_decoder_keys, load_received_weights, validate
from plgg_fl.fl.protocol import (MODEL_NAME_META, RECORDS_FILE, TRAINS, make_record, record_json, record_line,
                                 results_folder, scalar_metrics)
from plgg_fl.fl.prox import ProxTrainer
from plgg_fl.fl.site import resolve_site_config

log = logging.getLogger("plgg_fl.client")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stage", choices=TRAINS, default="full", help="what is trained and sent")
    p.add_argument("--local-steps", type=int, default=10, help="optimiser steps per round")
    p.add_argument("--send", choices=("full", "diff"), default="full", help="weights or their differences")
    p.add_argument("--val-split", default="val", help="split the received global model is validated on")
    p.add_argument("--eval-splits", default="test", help="comma-separated splits scored by 'validate'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig field")
    return p.parse_args(argv)


#: Default fewest cases behind a summary that may leave a site with any statistic; below it only the
#: counts go (with 2 test cases, median, quartiles, mean and sd give each case's value away). From it
#: up to twice it, the median goes too; the quartiles, mean and sd only from twice it (with 5 cases,
#: q1, median, q3 are the 2nd-4th values and mean and sd then solve for the other two). A site sets
#: its own with ``$PLGG_FL_MIN_SUMMARY_CASES``.
MIN_SUMMARY_CASES = 5
ENV_MIN_SUMMARY_CASES = "PLGG_FL_MIN_SUMMARY_CASES"


def min_summary_cases() -> int:
    """The site's threshold (``$PLGG_FL_MIN_SUMMARY_CASES``, default :data:`MIN_SUMMARY_CASES`)."""
    raw = os.environ.get(ENV_MIN_SUMMARY_CASES, "")
    try:
        return max(1, int(raw)) if raw.strip() else MIN_SUMMARY_CASES
    except ValueError:
        raise ValueError(f"${ENV_MIN_SUMMARY_CASES} must be a whole number, got {raw!r}") from None


def site_cases(manifest, split: str, metrics: dict[str, float], prefix: str, required: bool):
    """``split``'s usable cases; the counts of left-out cases and their reasons go into ``metrics``
    (``<prefix>excluded/cases``, ``<prefix>excluded/<problem code>``: numbers only, never case keys).
    ``required`` and none usable: an error naming the counts (it reaches the lead as the site's failure)."""
    excluded: dict[str, int] = {}
    cases = usable_cases(manifest, split, excluded=excluded)
    for code, n in excluded.items():
        metrics[f"{prefix}excluded/{code}"] = float(n)
    total = len(manifest.split(split))
    metrics[f"{prefix}listed"] = float(total)
    if required and not cases and total:
        why = ", ".join(f"{n} {code}" for code, n in sorted(excluded.items()) if code != "cases")
        raise RuntimeError(f"{manifest.site}: no usable {split} case: {total} listed, all left out ({why}); "
                           "`plgg-fl data check` at the site lists each problem")
    return cases


class SiteRecords:
    """Where a site's client reports what it does (:data:`plgg_fl.fl.protocol.RECORD_FIELDS`): each record
    is appended to ``plgg_results/<job_id>/records.jsonl`` (kept at the site) and logged as its
    ``plgg-record`` line (logger ``plgg_fl.client``; a ``failed`` record at ERROR, so it is also in the
    site's ``error_log.txt``, the log a site sends the server after a job; others at INFO)."""

    def __init__(self, site: str, job_id: str):
        self.site = site
        self.path = Path("plgg_results") / job_id / RECORDS_FILE

    def write(self, event: str, **fields) -> dict:
        rec = make_record(event, self.site, time.time(), **fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(record_json(rec) + "\n")
        log.log(logging.ERROR if event == "failed" else logging.INFO, record_line(rec))
        return rec

    def failed(self, exc: BaseException) -> dict:
        """The ``failed`` record of ``exc``: its type, message and the last lines of its traceback."""
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return self.write("failed", error=type(exc).__name__, message=str(exc) or repr(exc), traceback="".join(tb)[-4000:])


@dataclass
class SiteState:
    """What a site's client keeps across the tasks of one job: the network, its one Trainer (built at
    the first ``train`` task, kept across rounds), the validation split checked once, models scored."""

    args: argparse.Namespace
    site: str
    manifest: Any
    cfg: TrainConfig
    model: PlggUNet
    decoder_keys: list[str]
    records: SiteRecords
    trainer: ProxTrainer | None = None
    validation: tuple[list, dict[str, float]] | None = None  # (usable cases, their counts)
    train_counts: dict[str, float] = field(default_factory=dict)
    n_evaluated: int = 0

    @property
    def send_keys(self) -> list[str]:
        """The tensors this site trains and sends: the decoder's in stage 3, else every one."""
        return self.decoder_keys if self.args.stage == "decoder" else list(self.model.state_dict())


def site_state(args: argparse.Namespace, site: str, job_id: str = "local") -> SiteState:
    """The state of ``site`` for job ``job_id`` run with ``args``: its data found at the site, the network
    built (record ``started``)."""
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    site_cfg = resolve_site_config(site)
    if site_cfg.device:
        overrides["device"] = site_cfg.device
    cfg = TrainConfig.from_overrides(overrides)
    model = PlggUNet(preset=cfg.preset)
    state = SiteState(args, site, load_manifest(site_cfg.manifest), cfg, model, encoder_decoder_keys(model)[1],
                      SiteRecords(site, job_id))
    state.records.write("started", stage=args.stage, data_source=str(site_cfg.source), sent_tensors=len(state.send_keys),
                        total_tensors=len(model.state_dict()))
    return state


def receive_weights(state: SiteState, received: FLModel) -> None:
    """Load the weights a task brought: every tensor, or (stage 3) exactly the decoder's; anything else
    stops the site with the keys named."""
    if received.params:
        weights = {k: torch.as_tensor(v) for k, v in received.params.items()}
        load_received_weights(state.model, weights, state.decoder_keys if state.args.stage == "decoder" else None)


def handle_train(state: SiteState, received: FLModel, tracker: Any = None) -> FLModel:
    """``train``: validate the received global model (``val_dice``), train ``--local-steps`` steps, return
    the sent tensors (weights or differences) with the round's scalars."""
    args, model = state.args, state.model
    if state.validation is None:
        counts: dict[str, float] = {}
        state.validation = site_cases(state.manifest, args.val_split, counts, f"{args.val_split}/", required=False), counts
    val_cases, metrics = state.validation[0], dict(state.validation[1])  # the counts go with every round
    val_dice = float(validate(model, val_cases, state.cfg)["val_dice"]) if val_cases else math.nan
    if math.isfinite(val_dice):  # the mean only; per-case values stay here
        metrics["val_dice"] = val_dice
    if state.trainer is None:  # the training split is checked once per job; its counts go with every round
        train_cases = site_cases(state.manifest, "train", state.train_counts, "train/", required=True)
        if not train_cases:
            raise RuntimeError(f"{state.manifest.site}: the manifest lists no train case; this site cannot train")
        state.trainer = ProxTrainer(model, state.cfg, train_cases, freeze_encoder=args.stage == "decoder", progress=False)
    metrics.update(state.train_counts)
    trainer, send_keys = state.trainer, state.send_keys
    trainer.set_global((received.meta or {}).get(AlgorithmConstants.FEDPROX_MU, 0.0))
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in send_keys}
    out = trainer.train_steps(args.local_steps, progress=False)
    metrics["train_loss"] = float(out["loss"])
    after = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in send_keys}
    if args.send == "diff":
        params, ptype = {k: after[k] - before[k].cpu() for k in send_keys}, ParamsType.DIFF
    else:
        params, ptype = after, ParamsType.FULL
    state.records.write("round", round=received.current_round, val_dice=metrics.get("val_dice", math.nan),
                        train_loss=metrics["train_loss"], steps=int(out["steps"]), fedprox_mu=float(trainer.mu or 0.0))
    if tracker is not None:
        for name, value in metrics.items():  # the same scalars that go to the server with the weights
            tracker.add_scalar(name, value, global_step=received.current_round)
    return FLModel(params=params, params_type=ptype, metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": out["steps"]})


def handle_evaluate(state: SiteState, received: FLModel, job_id: str) -> FLModel:
    """``validate``: score the received model on ``--eval-splits``; per-case rows stay at the site under
    ``plgg_results/<job_id>/<model name>/``, only scalar summaries are returned."""
    from plgg_fl.engine import evaluate_cases

    state.n_evaluated += 1
    metrics: dict[str, float] = {}
    name = (received.meta or {}).get(MODEL_NAME_META)
    model_dir = Path("plgg_results") / job_id / results_folder(name, state.n_evaluated)
    model_dir.mkdir(parents=True, exist_ok=True)  # which model this is, for the site's own reports
    (model_dir / "model.json").write_text(json.dumps({"model": name, "order": state.n_evaluated}), encoding="utf-8")
    name = name or f"model_{state.n_evaluated}"
    state.records.write("scoring", model=name, splits=state.args.eval_splits)
    for split in [s for s in state.args.eval_splits.split(",") if s]:
        cases = site_cases(state.manifest, split, metrics, f"{split}/", required=True)
        if not cases:  # the site has no such split (it lists none): skipped, "<split>/listed" = 0 says so
            continue
        _, summary = evaluate_cases(state.model, cases, state.cfg, out_dir=model_dir / split, progress=False)
        metrics.update(scalar_metrics(summary, prefix=f"{split}/", min_cases=min_summary_cases()))
    state.records.write("evaluation", model=name, splits=state.args.eval_splits, n_metrics=len(metrics))
    return FLModel(metrics=metrics)


def handle_submit(state: SiteState) -> FLModel:
    """``submit_model``: the site's current weights."""
    return FLModel(params={k: v.detach().cpu() for k, v in state.model.state_dict().items()})


def main(argv=None) -> None:
    """The Client API loop: one task at a time, each answered by its handler."""
    args = parse_args(argv)
    flare.init()
    tracker = SummaryWriter()  # scalars streamed to the server's TensorBoard receiver
    site, job_id = flare.get_site_name(), flare.get_job_id()
    try:
        state = site_state(args, site, job_id)
        while flare.is_running():
            received = flare.receive()
            if received is None:
                break
            receive_weights(state, received)
            if flare.is_train():
                flare.send(handle_train(state, received, tracker))
            elif flare.is_evaluate():
                flare.send(handle_evaluate(state, received, job_id))
            elif flare.is_submit_model():
                flare.send(handle_submit(state))
    except Exception as exc:  # the site's failure, as a record the pipeline and the deploy wrapper read
        SiteRecords(site, job_id).failed(exc)
        raise


def run() -> None:
    """:func:`main`, with a failure's traceback printed where operators look: NVFlare runs the job's
    script in a thread whose traceback goes to the process's stderr, not to the site's log.txt; printed,
    it lands in the site log (and the pipeline's failure report)."""
    try:
        main()
    except BaseException:
        print("[plgg-fl client] FAILED:\n" + traceback.format_exc())
        raise


if __name__ == "__main__":
    run()
