"""``plgg-fl simulate --config C`` and ``plgg-fl demo``: the stepwise pipeline in the NVFlare simulator."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from plgg_fl.fl.recipes import PACKAGE_ROOT


def find_config(name_or_path: str) -> Path:
    """A config path as given, else ``simulator_configs/<name>.yaml`` here or in the source tree."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for base in (Path.cwd(), PACKAGE_ROOT):
        cand = base / "simulator_configs" / f"{p.stem}.yaml"
        if cand.is_file():
            return cand
    raise SystemExit(f"config {name_or_path!r} not found (looked for simulator_configs/{p.stem}.yaml)")


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="run stage 1 -> 2 -> 3 -> evaluation (and baselines) in the NVFlare simulator")
    p.add_argument("--config", required=True, help="simulator config YAML (or a name in simulator_configs/)")
    p.add_argument("--out", default="runs", help="output root; results go to OUT/<config name>/ (default runs)")
    p.add_argument("--methods", nargs="+", default=None, help="override the config's methods")
    p.add_argument("--record-sends", action="store_true", help="record what each site sends (runs/<name>/sends/)")
    p.add_argument("--dry-run", action="store_true", help="check the config, print the plan and the jobs, run nothing")
    p.set_defaults(func=run_simulate)

    d = subparsers.add_parser("demo", help="synthesize the demo cohort (if absent) and run the demo pipeline with a summary")
    d.add_argument("--config", default="demo", help="config (default: simulator_configs/demo.yaml)")
    d.add_argument("--out", default="runs", help="output root (default runs)")
    d.set_defaults(func=run_demo, methods=None, record_sends=False, dry_run=False)


def dry_run(cfg) -> int:
    from plgg_fl.fl import recipes
    from plgg_fl.pipeline.config import METHODS, dump_config

    print(dump_config(cfg))
    for name, spec in cfg.stages.items():
        o = spec.options
        builder = {"pretrain": recipes.pretrain_recipe, "finetune": recipes.finetune_recipe, "decoder": recipes.decoder_recipe}[name]
        recipe = builder(o, sites=spec.sites, initial_ckpt=None)
        print(f"{name:9s} -> job {recipe.name}: sites {spec.sites}, {o.num_rounds} rounds x {o.local_steps} steps "
              f"= {spec.total_steps} steps/site; client args: {recipes.client_args('decoder' if name == 'decoder' else 'full', o)}")
    recipes.evaluate_recipe(cfg.preset, sites=cfg.eval_sites, train=cfg.stages["finetune"].options.train)
    print(f"evaluate  -> job plgg_evaluate: sites {cfg.eval_sites}, splits {cfg.eval_splits}")
    for m in cfg.methods:
        print(f"method {m}: {METHODS[m]}")
    from plgg_fl.engine import PlggUNet, TrainConfig

    tc = TrainConfig.from_dict({**cfg.stages["finetune"].options.train, "preset": cfg.preset})
    model = PlggUNet(preset=cfg.preset)
    bad = [p for p in tc.patch_size if int(p) % model.divisor]
    if bad:
        print(f"ERROR: patch_size {tc.patch_size} not a multiple of {model.divisor} for preset {cfg.preset}")
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.preset}: {n / 1e6:.1f} M parameters; patch {tc.patch_size} at {tc.spacing_mm} mm; config OK")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from plgg_fl.pipeline.config import ConfigError, load_config
    from plgg_fl.pipeline.run import Pipeline
    from plgg_fl.pipeline.simulate import StageFailed

    try:
        cfg = load_config(find_config(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.methods:
        cfg.methods = list(args.methods)
    if args.dry_run:
        return dry_run(cfg)
    try:
        Pipeline(cfg, out_root=args.out, record_sends=args.record_sends, printer=lambda s: print(s, flush=True)).run()
    except StageFailed as exc:
        print(f"\nPIPELINE FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


def run_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rc = run_simulate(args)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s (rc {rc})")
    return rc
