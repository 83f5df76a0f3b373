"""``plgg-fl jobs export``: (re)generate the submit-ready NVFlare job folders.

``plgg-fl jobs export`` writes ``jobs/`` from ``simulator_configs/paper.yaml`` (the real-data
settings); these are the committed folders, initialised from the model class. For a real run hand
each stage its starting model (absolute path *on the server*) in a generated copy::

    plgg-fl jobs export --out /tmp/jobs --stage plgg_finetune --init /srv/plgg/brats_pretrain.pt
    plgg-fl jobs export --out /tmp/jobs --stage plgg_evaluate --model stepwise=/srv/plgg/plgg_decoder.pt
    nvflare job submit -j /tmp/jobs/plgg_finetune
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from plgg_fl.bundled import SOURCE_ROOT
from plgg_fl.cliopts import add_aliased
from plgg_fl.errors import CommandError
from plgg_fl.fl.protocol import JOB_NAMES


def build_recipes(config: Path, initial_ckpt: str | None = None, models: dict[str, str] | None = None,
                  ship_initial: str | Path | None = None, ship: list[str] | None = None) -> dict:
    """The four stage recipes from a simulator config, keyed by job name (builders: call one to build it).

    Training jobs start from ``initial_ckpt`` (an absolute path on the server) or ``ship_initial`` (a
    local file shipped inside the job, :func:`plgg_fl.fl.recipes.training_recipe`); ``plgg_evaluate``
    scores ``models`` (name -> server path, or the bare name of a file in ``ship``)."""
    from plgg_fl.fl import recipes  # NVFlare and torch: loaded when a job is built, not at start-up
    from plgg_fl.pipeline.config import load_config

    cfg = load_config(config)
    st = cfg.stages
    start = {"initial_ckpt": initial_ckpt, "ship_initial": ship_initial}
    return {
        "brats_pretrain": lambda: recipes.pretrain_recipe(st["pretrain"].options, st["pretrain"].sites, **start),
        "plgg_finetune": lambda: recipes.finetune_recipe(st["finetune"].options, st["finetune"].sites, **start),
        "plgg_decoder": lambda: recipes.decoder_recipe(st["decoder"].options, st["decoder"].sites, **start),
        "plgg_evaluate": lambda: recipes.evaluate_recipe(
            cfg.preset, cfg.eval_sites, models=models, train=st["finetune"].options.train, eval_splits=cfg.eval_splits,
            ship=ship,
        ),
    }


def export_jobs(out: Path, config: Path, stages=None, initial_ckpt=None, models=None) -> list[Path]:
    """Export the stage jobs to ``out/<job name>/`` (each folder replaced). Returns the folders."""
    out = Path(out)
    builders = build_recipes(config, initial_ckpt, models)
    written = []
    for name in stages or JOB_NAMES:
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        builders[name]().export(str(out))
        written.append(dest)
    return written


def diff_trees(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two folders (missing on one side or different bytes)."""
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    out = sorted(str(p) for p in fa ^ fb)
    out += sorted(str(p) for p in fa & fb if (a / p).read_bytes() != (b / p).read_bytes())
    return out


def nvflare_initial(path: str) -> str:
    """``--init`` as NVFlare's persistor reads it (``{"model": state dict}`` or a bare state dict).

    An engine checkpoint found at ``path`` (``plgg-fl train``, ``plgg-fl import-nnunet``) is written
    once more as ``<stem>.nvflare.pt`` beside it, and the jobs start from that; the persistor would not
    read the engine format. A path not on this machine (the server's) is used as given.
    """
    import torch

    from plgg_fl.engine.checkpoint import nvflare_form

    src = Path(path)
    if not src.is_file():
        return path
    try:
        converted = nvflare_form(src)
    except ValueError as exc:
        raise CommandError(f"--init: {exc}") from None
    if converted is None:
        return path
    dest = src.with_name(src.stem + ".nvflare.pt")
    torch.save(converted, dest)
    print(f"note: {src} is an engine checkpoint; the jobs start from {dest}, its weights in the form NVFlare's "
          "persistor reads", file=sys.stderr)
    return str(dest)


def register(subparsers) -> None:
    p = subparsers.add_parser("jobs", help="NVFlare job folders: export (regenerate jobs/) or check for drift")
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    e = sub.add_parser("export", help="write the stage jobs (default: jobs/ from simulator_configs/paper.yaml)")
    e.add_argument("--out", default=None, help="output folder (default: ./jobs)")
    e.add_argument("--config", default=None, help="settings: a YAML or a name in simulator_configs/ (default: paper)")
    e.add_argument("--stage", nargs="+", choices=JOB_NAMES, default=None, help="only these jobs")
    add_aliased(e, "--init", ["--initial-ckpt"], dest="initial_ckpt", default=None, metavar="CKPT",
                help="training jobs start from this model: its absolute path on the server (default: none)")
    e.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="plgg_evaluate: a model to score")
    e.add_argument("--check", action="store_true", help="export to a temp folder and report drift from --out; exit 1 on drift")
    e.set_defaults(func=run_export)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    from plgg_fl.pipeline.cli import find_config

    out = Path(args.out or "jobs")
    config = find_config(args.config or "paper")
    models = dict(m.split("=", 1) for m in args.model)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            export_jobs(Path(tmp), config, args.stage)
            drift = [f"{n}/{d}" for n in (args.stage or JOB_NAMES) for d in diff_trees(Path(tmp) / n, out / n)]
        for d in drift:
            print(f"drift: {d}")
        print("jobs up to date" if not drift else f"{len(drift)} file(s) differ; run `plgg-fl jobs export`")
        return 1 if drift else 0
    initial = None if args.initial_ckpt is None else nvflare_initial(args.initial_ckpt)
    for path in export_jobs(out, config, args.stage, initial, models or None):
        print(f"exported {path}")
    if args.initial_ckpt is None and not models and out.resolve() != (SOURCE_ROOT / "jobs").resolve():
        print("note: no --init / --model given: training jobs start from the model class, plgg_evaluate has no model",
              file=sys.stderr)
    return 0
