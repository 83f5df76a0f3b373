"""``plgg-fl simulate --config C`` and ``plgg-fl demo``: the stepwise pipeline in the NVFlare simulator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plgg_fl.bundled import bundled_dir
from plgg_fl.pipeline.config import METHODS, ConfigError, check_methods, dump_config, load_config


def find_config(name_or_path: str) -> Path:
    """A config file. A path (a folder part or a ``.yaml``/``.yml`` ending) is taken as given and must
    exist; a bare name (``demo``, ``tiny``) is ``simulator_configs/<name>.yaml`` in the current folder,
    else the bundled one (the source tree's, or the installed wheel's). Raises :class:`ConfigError` when
    there is none."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if len(p.parts) != 1 or p.suffix in (".yaml", ".yml"):
        raise ConfigError("config file not found", p)
    shipped = bundled_dir("simulator_configs")
    places = [Path.cwd() / "simulator_configs" / f"{p.name}.yaml", shipped / f"{p.name}.yaml"]
    for cand in places:
        if cand.is_file():
            return cand
    bundled = ", ".join(sorted(c.stem for c in shipped.glob("*.yaml")))
    raise ConfigError(f"no config named {name_or_path!r}; bundled: {bundled}", " or ".join(dict.fromkeys(map(str, places))))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="run stage 1 -> 2 -> 3 -> evaluation (and baselines) in the NVFlare simulator",
        description="Stage 1 -> 2 -> 3 -> evaluation and the baselines in the NVFlare simulator, into OUT/<name>/ "
        "(OUT/<name>-2/, ... when that holds an earlier run, unless --overwrite). Ctrl-C stops every process of the "
        "run (exit 130). Exit status: 0 done, 1 a stage failed, 2 a usage or config error.")
    p.add_argument("--config", required=True, metavar="NAME|PATH",
                   help="a config file, or the name of one in simulator_configs/ (tiny, demo, paper); required, no default")
    _common(p)
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to run, of: {', '.join(METHODS)} (default: the config's methods)")
    p.add_argument("--record-sends", action="store_true", help="record what each site sends (OUT/<name>/sends/; default off)")
    p.add_argument("--dry-run", action="store_true", help="check the config, print the plan and the jobs, run nothing")
    p.set_defaults(func=run_simulate)

    d = subparsers.add_parser(
        "demo", help="synthesize the demo cohort (if absent) and run the demo pipeline with a summary",
        description="plgg-fl simulate --config demo, synthesizing the demo cohort into runs/cohorts/demo/ first "
        "when it is absent; ends with the table of Dice per method and test set.")
    d.add_argument("--config", default="demo", metavar="NAME|PATH", help="config name or file (default: demo)")
    _common(d)
    d.set_defaults(func=run_demo, methods=None, record_sends=False, dry_run=False)


def _common(p) -> None:
    p.add_argument("--out", default="runs", help="output root; results go to OUT/<config name>/ (default: runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in OUT/<config name>/ (default: write beside it, to <name>-2/, ...)")


def dry_run(cfg) -> int:
    from plgg_fl.fl import recipes

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

    tc = TrainConfig.from_overrides({**cfg.stages["finetune"].options.train, "preset": cfg.preset})
    model = PlggUNet(preset=cfg.preset)
    bad = [p for p in tc.patch_size if int(p) % model.divisor]
    if bad:
        raise ConfigError(f"patch_size {tc.patch_size} is not a multiple of {model.divisor} for preset {cfg.preset}", cfg.source)
    n = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.preset}: {n / 1e6:.1f} M parameters; patch {tc.patch_size} at {tc.spacing_mm} mm; config OK")
    return 0


def _load(args: argparse.Namespace):
    cfg = load_config(find_config(args.config))
    if args.methods:
        cfg.methods = check_methods(list(args.methods), "--methods")
    return cfg


def run_simulate(args: argparse.Namespace) -> int:
    from plgg_fl.errors import error_line
    from plgg_fl.pipeline.processes import stop_children
    from plgg_fl.pipeline.run import Pipeline
    from plgg_fl.pipeline.simulate import StageFailed

    cfg = _load(args)
    if args.dry_run:
        return dry_run(cfg)
    pipe = Pipeline(cfg, out_root=args.out, record_sends=args.record_sends, overwrite=args.overwrite,
                    printer=lambda s: print(s, flush=True))
    try:
        pipe.run()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (plgg_fl.errors.Terminated)
        from plgg_fl.errors import interrupt_exit_code

        stop_children()
        print(f"plgg-fl {args.command}: interrupted; every process of the run stopped; "
              f"partial results in {pipe.out} (not reportable)", file=sys.stderr)
        return interrupt_exit_code(exc)
    except StageFailed as exc:  # the first line says what failed, the site's error lines follow
        first, _, rest = str(exc).partition("\n")
        print("\n" + error_line(args.command, f"{first} ({pipe.out})") + ("\n" + rest if rest else ""), file=sys.stderr)
        return 1
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``simulate`` with the demo config; the run's last line is the ``plgg-fl report`` command."""
    return run_simulate(args)
