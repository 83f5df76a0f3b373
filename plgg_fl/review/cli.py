"""``plgg-fl review-packet`` and ``plgg-fl review-score`` (run at the site that holds the cases)."""

from __future__ import annotations

import argparse
from pathlib import Path

from plgg_fl.cliopts import add_aliased
from plgg_fl.errors import CommandError


def register(subparsers) -> None:
    p = subparsers.add_parser("review-packet", help="blinded rating packet: model's and experts' masks of N test cases, key kept apart")
    p.add_argument("--out", required=True, help="packet folder to give the raters")
    p.add_argument("--key", default=None, help="key CSV (default: <out>_KEY.csv beside the packet; never inside it)")
    p.add_argument("--run", default=None, help="a run folder: model settings and checkpoint (with --method), cohort (with --site)")
    p.add_argument("--method", default="stepwise", help="the run's method whose model is reviewed (default stepwise)")
    add_aliased(p, "--model", ["--checkpoint"], default=None, metavar="CKPT",
                help="model checkpoint instead of --run's (engine format, or NVFlare with --preset)")
    p.add_argument("--preset", default=None, help="network preset for an NVFlare-format --model")
    p.add_argument("--manifest", default=None, help="this site's manifest (default with --run: the run cohort's --site manifest)")
    p.add_argument("--site", default="dfci_bch", help="site name in the run's cohort (default dfci_bch)")
    p.add_argument("--split", default="test", help="split the cases come from (default test)")
    p.add_argument("-n", "--n-cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the case choice and item order")
    p.set_defaults(func=run_packet)

    s = subparsers.add_parser("review-score", help="score filled rating sheets against the key: AI vs experts, with tests")
    s.add_argument("sheets", nargs="+", help="filled rating_sheet CSVs (one per rater)")
    s.add_argument("--key", required=True, help="the packet's key CSV")
    s.add_argument("--out", default=None, help="write the aggregates as JSON here")
    s.set_defaults(func=run_score)


def _model_and_cfg(args):
    from plgg_fl.engine import PlggUNet, TrainConfig, load_checkpoint
    from plgg_fl.engine.checkpoint import model_and_config

    if args.run:
        from plgg_fl.report.collect import load_run

        run = load_run(args.run)
        found = run.model(args.method, Path(args.model) if args.model else None)
        if found is None:
            raise CommandError(f"no checkpoint for method {args.method!r}", args.run)
        return (*found, run)
    if not args.model:
        raise CommandError("give --run RUN_DIR or --model CKPT")
    if args.preset:
        return (*model_and_config(Path(args.model), TrainConfig.for_preset(args.preset)), None)
    model, cfg, _ = load_checkpoint(args.model)
    assert isinstance(model, PlggUNet)
    return model, cfg, None


def run_packet(args: argparse.Namespace) -> int:
    from plgg_fl.data.manifest import load_manifest
    from plgg_fl.data.validate import usable_cases
    from plgg_fl.engine import predict
    from plgg_fl.review.packet import make_packet

    model, cfg, run = _model_and_cfg(args)
    manifest = Path(args.manifest) if args.manifest else (run.manifest(args.site) if run else None)
    if manifest is None or not manifest.is_file():
        raise CommandError("no manifest: give --manifest, or --run with a cohort holding --site", manifest)
    cases = usable_cases(load_manifest(manifest), args.split)
    try:
        sheet, key = make_packet(cases, lambda c: predict(model, c.image, cfg).mask, args.out, n=args.n_cases,
                                 seed=args.seed, key_path=args.key)
    except ValueError as exc:
        raise CommandError(exc) from exc
    print(f"packet: {Path(args.out)} (rating sheet {sheet.name}); KEY (keep from raters): {key}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from plgg_fl.review.score import SheetError, read_key, read_sheets, score, summary_text

    try:
        res = score(read_sheets(args.sheets, read_key(args.key)))
    except SheetError as exc:
        raise CommandError(exc) from exc
    print(summary_text(res))
    if args.out:
        from plgg_fl.engine.evaluate import write_json

        write_json(res, args.out)
        print(f"aggregates: {args.out}")
    return 0
