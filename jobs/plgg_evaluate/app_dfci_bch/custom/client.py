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
import traceback
from pathlib import Path

import torch
import yaml

import nvflare.client as flare
from nvflare.client.tracking import SummaryWriter
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AlgorithmConstants
from plgg_fl.data.manifest import load_manifest
from plgg_fl.data.validate import usable_cases
from plgg_fl.engine import PlggUNet, TrainConfig, encoder_decoder_keys, load_received_weights, validate
from plgg_fl.fl.protocol import MODEL_NAME_META, TRAINS, results_folder, scalar_metrics
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


def main(argv=None) -> None:
    args = parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    flare.init()
    tracker = SummaryWriter()  # scalars streamed to the server's TensorBoard receiver
    site = flare.get_site_name()
    site_cfg = resolve_site_config(site)
    manifest = load_manifest(site_cfg.manifest)
    if site_cfg.device:
        overrides["device"] = site_cfg.device
    cfg = TrainConfig.from_overrides(overrides)
    model = PlggUNet(preset=cfg.preset)
    all_keys = list(model.state_dict())
    _, decoder_keys = encoder_decoder_keys(model)
    send_keys = decoder_keys if args.stage == "decoder" else all_keys
    trainer = None
    validation = None  # (usable validation cases, their counts): the split is checked once per job
    n_evaluated = 0  # models scored so far (an evaluation job may send several)
    print(f"[{site}] data from {site_cfg.source}; stage={args.stage}; {len(send_keys)}/{len(all_keys)} tensors sent")

    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        if received.params:
            state = {k: torch.as_tensor(v) for k, v in received.params.items()}
            # every tensor, or (stage 3) exactly the decoder's; anything else stops the site with the keys named
            load_received_weights(model, state, decoder_keys if args.stage == "decoder" else None)
        if flare.is_train():
            if validation is None:
                counts: dict[str, float] = {}
                validation = site_cases(manifest, args.val_split, counts, f"{args.val_split}/", required=False), counts
            val_cases, metrics = validation[0], dict(validation[1])  # the counts go with every round
            val_dice = float(validate(model, val_cases, cfg)["val_dice"]) if val_cases else math.nan
            if math.isfinite(val_dice):  # the mean only; per-case values stay here
                metrics["val_dice"] = val_dice
            if trainer is None:  # the training split is checked once per job; its counts go with every round
                train_excluded: dict[str, float] = {}
                train_cases = site_cases(manifest, "train", train_excluded, "train/", required=True)
                if not train_cases:
                    raise RuntimeError(f"{manifest.site}: the manifest lists no train case; this site cannot train")
                trainer = ProxTrainer(model, cfg, train_cases, freeze_encoder=args.stage == "decoder", progress=False)
            metrics.update(train_excluded)
            trainer.set_global((received.meta or {}).get(AlgorithmConstants.FEDPROX_MU, 0.0))
            before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in send_keys}
            out = trainer.train_steps(args.local_steps, progress=False)
            metrics["train_loss"] = float(out["loss"])
            after = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in send_keys}
            if args.send == "diff":
                params, ptype = {k: after[k] - before[k].cpu() for k in send_keys}, ParamsType.DIFF
            else:
                params, ptype = after, ParamsType.FULL
            print(
                f"[{site}] round {received.current_round}: val_dice(global)={metrics.get('val_dice', float('nan')):.4f} "
                f"train_loss={metrics['train_loss']:.4f} steps={out['steps']}"
                + (f" fedprox_mu={trainer.mu:g}" if trainer.mu else "")
            )
            for name, value in metrics.items():  # the same scalars that go to the server with the weights
                tracker.add_scalar(name, value, global_step=received.current_round)
            flare.send(
                FLModel(params=params, params_type=ptype, metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": out["steps"]})
            )
        elif flare.is_evaluate():
            metrics = {}
            n_evaluated += 1
            name = (received.meta or {}).get(MODEL_NAME_META)
            model_dir = Path("plgg_results") / flare.get_job_id() / results_folder(name, n_evaluated)
            model_dir.mkdir(parents=True, exist_ok=True)  # which model this is, for the site's own reports
            (model_dir / "model.json").write_text(json.dumps({"model": name, "order": n_evaluated}), encoding="utf-8")
            name = name or f"model_{n_evaluated}"
            print(f"[{site}] evaluation: scoring model '{name}' on {args.eval_splits}")
            for split in [s for s in args.eval_splits.split(",") if s]:
                cases = site_cases(manifest, split, metrics, f"{split}/", required=True)
                if not cases:  # the site has no such split (it lists none): skipped, "<split>/listed" = 0 says so
                    continue
                out_dir = model_dir / split
                from plgg_fl.engine import evaluate_cases

                _, summary = evaluate_cases(model, cases, cfg, out_dir=out_dir, progress=False)
                metrics.update(scalar_metrics(summary, prefix=f"{split}/", min_cases=min_summary_cases()))
            print(f"[{site}] evaluation of model '{name}': {len(metrics)} scalar metrics; per-case rows kept at the site")
            flare.send(FLModel(metrics=metrics))
        elif flare.is_submit_model():
            flare.send(FLModel(params={k: v.detach().cpu() for k, v in model.state_dict().items()}))


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        # NVFlare runs this script in a thread whose traceback goes to the process's stderr, not to
        # the site's log.txt; print it so it lands in the site log where operators (and the
        # pipeline's failure report) look.
        print("[plgg-fl client] FAILED:\n" + traceback.format_exc())
        raise
