"""``plgg-fl train``, ``evaluate``, ``compare`` and ``import-nnunet``: central / local training and evaluation without
NVFlare, and stage 1 from an nnU-Net v2 model."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from plgg_fl.cliopts import add_aliased
from plgg_fl.errors import CommandError, WorkError, about_file, os_error

__all__ = ["register", "site_cases"]

log = logging.getLogger("plgg_fl.engine")


def site_cases(manifest, split: str):
    """The usable cases of ``split`` (bad ones left out and logged by the data layer)."""
    from plgg_fl.data.validate import usable_cases

    return usable_cases(manifest, split)


def _sets(items: list[str]) -> dict:
    out = {}
    for s in items:
        if "=" not in s:
            raise CommandError(f"--set expects KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def register(subparsers) -> None:
    t = subparsers.add_parser(
        "train",
        help="train a model on a manifest's train split (central / local baseline / stage 1)",
        description="Patch-based training with validation on the manifest's val split every --val-every steps. "
        "Writes DIR/model.pt (last), DIR/best.pt (best val Dice), DIR/train_log.jsonl and DIR/config.json.",
    )
    t.add_argument("--manifest", required=True, type=Path, help="site manifest (YAML/JSON)")
    t.add_argument("--preset", choices=("tiny", "small", "nnunet", "nnunet_v2"),
                   help="network preset (default small; with --init the checkpoint's)")
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    t.add_argument("--init", type=Path, metavar="CKPT", help="start from this checkpoint (its network and preprocessing)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its DIR/model.pt (weights, optimizer, LR schedule, step) up to "
                        "its max_steps, or --steps when given; its config.json settings are kept")
    t.add_argument("--freeze-encoder", action="store_true", help="stage 3: train the decoder only")
    t.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: TrainConfig.max_steps)")
    t.add_argument("--val-every", type=int, default=250, metavar="N", help="validate and log every N steps (default 250)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field, e.g. lr=0.001")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a manifest split against every rater",
        description="Writes DIR/per_case.csv (one row per case and comparison) and DIR/summary.json (aggregates).",
    )
    e.add_argument("--manifest", required=True, type=Path, help="site manifest (YAML/JSON)")
    e.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default test)")
    add_aliased(e, "--model", ["--ckpt"], required=True, type=Path, metavar="CKPT", help="engine checkpoint to score")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    e.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8 flips)")
    e.add_argument("--keep-largest", action="store_true", help="keep the largest connected component")
    e.add_argument("--nsd-tolerance-mm", type=float, default=2.0,
                   help="surface Dice tolerance in mm (default 2); surfel-based NSD (Nikolov et al. 2021), stored with the results")
    e.add_argument("--save-predictions", action="store_true", help="also write DIR/predictions/<key>.nii.gz")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate)

    c = subparsers.add_parser(
        "compare",
        help="paired Wilcoxon signed-rank test of two evaluations' per-case metric",
        description="Reads two per_case.csv files written by `plgg-fl evaluate` and tests A vs B on the cases both define.",
    )
    c.add_argument("a", type=Path, help="per_case.csv of model A")
    c.add_argument("b", type=Path, help="per_case.csv of model B")
    c.add_argument("--comparison", default=None, help="comparison to test (default: the first model_vs_* in A)")
    c.add_argument("--metric", default="dice", help="per-case metric column (default dice)")
    c.set_defaults(func=_compare)

    n = subparsers.add_parser(
        "import-nnunet",
        help="stage 1 from a trained nnU-Net v2 model: its weights as a plgg-fl checkpoint",
        description="Maps an nnU-Net v2 3d_fullres PlainConvUNet (plans.json, dataset.json, fold_N/checkpoint_*.pth) onto the "
        "matching PlggUNet and writes an engine checkpoint with the preprocessing its plans imply: `plgg-fl simulate` takes it "
        "as `pretrained:`, `plgg-fl submit --init` as stage 2's start. What maps exactly and what is refused: docs/ENGINE.md.",
    )
    n.add_argument("results", type=Path, metavar="RESULTS",
                   help="nnU-Net trainer folder (.../DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres), the dataset "
                        "folder holding it, or a checkpoint .pth")
    n.add_argument("--fold", default="0", help="fold to import: 0-4 or all (default 0); nnU-Net's own predictions average its folds")
    n.add_argument("--checkpoint", choices=("final", "best"), default="final", help="checkpoint_final.pth (default) or checkpoint_best.pth")
    n.add_argument("--out", required=True, type=Path, metavar="CKPT", help="engine checkpoint to write")
    n.add_argument("--configuration", default=None, help="nnU-Net configuration (default: the checkpoint's, else 3d_fullres)")
    n.add_argument("--trainer", default="nnUNetTrainer", help="trainer, when RESULTS is a dataset folder (default nnUNetTrainer)")
    n.add_argument("--plans", default="nnUNetPlans", help="plans name, when RESULTS is a dataset folder (default nnUNetPlans)")
    n.add_argument("--channel", default=None,
                   help="input channel to keep: index or dataset.json channel_names name (default: the one named T2)")
    n.add_argument("--region", default=None,
                   help="region-based models: the whole-tumour region, name or output index (default: the one covering every label)")
    n.add_argument("--reinit-heads", action="store_true",
                   help="label-based multi-class models: import all but the output heads, which start fresh (stage 2 trains them)")
    n.add_argument("--axes", choices=("reverse", "keep"), default="reverse",
                   help="reverse (default): nnU-Net's reversed voxel order to plgg-fl's RAS order; keep: as nnU-Net has them")
    n.add_argument("--trust-checkpoint", action="store_true",
                   help="read the nnU-Net checkpoint with weights_only=False when the safe reader refuses it (a checkpoint can "
                        "run code: only for files you trust)")
    n.set_defaults(func=_import_nnunet)


def _manifest(path: Path):
    """The manifest at ``path``; a missing or unreadable one is a setup error (exit 2)."""
    from plgg_fl.data.manifest import load_manifest

    if not Path(path).is_file():
        raise CommandError("manifest not found", path)
    try:
        return load_manifest(path)
    except (OSError, ValueError) as exc:
        raise about_file(exc, path) from None


def _checkpoint(path: Path):
    """``load_checkpoint(path)``; a missing or unloadable file is a setup error (exit 2)."""
    import pickle

    from plgg_fl.engine import load_checkpoint

    if not Path(path).is_file():
        raise CommandError("checkpoint not found", path)
    try:
        return load_checkpoint(path)
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
        raise CommandError("not a plgg-fl engine checkpoint", path) from None


def _train(args: argparse.Namespace) -> int:
    import torch

    from plgg_fl.engine import PlggUNet, TrainConfig, Trainer, save_checkpoint
    from plgg_fl.data.manifest import data_provenance
    from plgg_fl.engine.checkpoint import read_checkpoint
    from plgg_fl.engine.networks import count_parameters

    manifest = _manifest(args.manifest)
    train_cases, val_cases = site_cases(manifest, "train"), site_cases(manifest, "val")
    if not train_cases:
        raise WorkError("no usable training cases", args.manifest)
    overrides = {"seed": args.seed, "device": args.device, **_sets(args.set)}
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    torch.manual_seed(args.seed)
    resume = None
    if args.resume:
        if args.init:
            raise CommandError("--resume continues the run in --out; give it without --init")
        last = Path(args.out) / "model.pt"
        if not last.is_file():
            raise CommandError("--resume: no model.pt to continue from (has this run saved a checkpoint yet?)", last)
        model, cfg, last_meta = _checkpoint(last)
        args.freeze_encoder = bool(last_meta.get("freeze_encoder"))  # the optimizer holds that run's trainable set
        args.init = last_meta.get("init")
        resume = read_checkpoint(last).get("training_state")
        if not resume:
            raise CommandError("--resume: model.pt holds no training state (written before resuming existed)", last)
        if args.steps is not None:
            cfg = cfg.replace(max_steps=args.steps)
        cfg = cfg.replace(device=args.device)
        log.info("resuming %s at step %d of %d", last, resume["step"], cfg.max_steps)
    elif args.init:
        model, init_cfg, meta = _checkpoint(args.init)
        if args.preset and args.preset != init_cfg.preset:
            log.warning("--preset %s ignored: the network comes from %s (%s)", args.preset, args.init, init_cfg.preset)
        # keep the pretrained model's preprocessing; training settings from this run's overrides
        keep = {k: getattr(init_cfg, k) for k in ("preset", "patch_size", "spacing_mm", "orientation", "crop_to_brain")}
        cfg = TrainConfig.from_dict({**TrainConfig.for_preset(init_cfg.preset).to_dict(), **keep, **overrides})
        log.info("initialised from %s (step %s)", args.init, meta["step"])
    else:
        cfg = TrainConfig.for_preset(args.preset or "small", **overrides)
        model = PlggUNet(cfg.preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
    log.info("%s: %d train / %d val cases; %s %.2f M parameters; patch %s at %s mm; %d steps on %s",
             manifest.site, len(train_cases), len(val_cases), cfg.preset, count_parameters(model) / 1e6,
             cfg.patch_size, cfg.spacing_mm, cfg.max_steps, cfg.torch_device())
    trainer = Trainer(model, cfg, train_cases, freeze_encoder=args.freeze_encoder, progress=not args.no_progress)
    best = {"val_dice": -1.0}
    meta = {"site": manifest.site, "freeze_encoder": args.freeze_encoder, "init": str(args.init) if args.init else None,
            "training_data": {manifest.site: data_provenance(args.manifest)}}
    if resume:
        trainer.restore_training_state(resume)
        if (out / "best.pt").is_file():  # keep the earlier best unless this run beats it
            earlier = read_checkpoint(out / "best.pt")
            best.update(val_dice=float(earlier["meta"].get("val_dice", -1.0)), total_steps=int(earlier["step"]))
    t0 = time.time()

    def on_epoch(rec: dict) -> None:
        rec = {**rec, "elapsed_s": round(time.time() - t0, 1)}
        with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        save_checkpoint(out / "model.pt", trainer.model, cfg, step=trainer.step, meta=meta, training_state=trainer.training_state())
        if rec.get("val_dice", -1.0) > best["val_dice"]:
            best.update(rec)
            save_checkpoint(out / "best.pt", trainer.model, cfg, step=trainer.step, meta={**meta, "val_dice": rec["val_dice"]})

    trainer.fit(cfg.max_steps, val_cases=val_cases, val_every=args.val_every, on_epoch=on_epoch)
    save_checkpoint(out / "model.pt", trainer.model, cfg, step=trainer.step, meta=meta, training_state=trainer.training_state())
    msg = f"trained {trainer.step} steps in {time.time() - t0:.0f} s -> {out / 'model.pt'}"
    if best["val_dice"] >= 0:
        msg += f"; best val Dice {best['val_dice']:.4f} at step {best['total_steps']} -> {out / 'best.pt'}"
    print(msg)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from plgg_fl.engine import evaluate_cases
    from plgg_fl.engine.metrics import format_summary

    manifest = _manifest(args.manifest)
    model, cfg, meta = _checkpoint(args.model)
    cases = site_cases(manifest, args.split)
    if not cases:
        raise WorkError(f"no usable cases in split {args.split}", args.manifest)
    cfg = cfg.replace(device=args.device)
    model.to(cfg.torch_device())
    _, summary = evaluate_cases(
        model, cases, cfg, out_dir=args.out, tta=args.tta, keep_largest=args.keep_largest,
        nsd_tolerance_mm=args.nsd_tolerance_mm, save_predictions=args.save_predictions, progress=not args.no_progress,
    )
    print(f"{manifest.site} / {args.split}: {len(cases)} cases, checkpoint {args.model} (step {meta['step']})")
    for name, g in summary["groups"].items():
        print(f"  {name:<24} Dice {format_summary(g['dice'])}")
        if "hd95_mm" in g:
            print(f"  {'':<24} HD95 mm {format_summary(g['hd95_mm'], 2)}")
    print(f"-> {Path(args.out) / 'per_case.csv'}, {Path(args.out) / 'summary.json'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from plgg_fl.engine.evaluate import compare_models, read_rows

    a, b = _rows(read_rows, args.a), _rows(read_rows, args.b)
    comparison = args.comparison or next((r["comparison"] for r in a if r["a"] == "model"), None)
    if comparison is None:
        raise CommandError("no model_vs_* rows", args.a)
    w = compare_models(a, b, comparison, args.metric)
    print(f"{comparison} {args.metric}: n={w['n']} median difference (A - B) {w['median_difference']:.4f}; "
          f"Wilcoxon W={w['statistic']} p={w['p_value']}" + (f" ({w['note']})" if "note" in w else ""))
    return 0


def _import_nnunet(args: argparse.Namespace) -> int:
    from plgg_fl.engine.nnunet_import import NnUNetImportError, import_nnunet

    try:
        res = import_nnunet(args.results, args.out, fold=args.fold, checkpoint=args.checkpoint, configuration=args.configuration,
                            trainer=args.trainer, plans_name=args.plans, channel=args.channel, region=args.region,
                            reinit_heads=args.reinit_heads, axes=args.axes, trust_checkpoint=args.trust_checkpoint)
    except NnUNetImportError as exc:
        what, prefix = str(exc), f"{args.results}: "
        raise CommandError("cannot import: " + (what[len(prefix):] if what.startswith(prefix) else what), args.results) from None
    except OSError as exc:
        raise os_error(exc) from None
    nn = res.meta["nnunet"]
    cfg = res.config
    net = f"preset {res.preset}" if res.preset else f"PlggUNet({res.model_args})"
    print(f"{res.path}: {res.meta['source']} -> {net}, {res.n_parameters / 1e6:.1f} M parameters")
    ch = nn["input_channel"]
    print(f"  input:  channel {ch['index']} '{ch['name']}' of {ch['of']}")
    out = nn["output"]
    print("  output: " + (f"region '{out['region']}' (sigmoid) as the 2-class softmax" if out["kind"] == "region" else out["mapping"]))
    print(f"  preprocessing: patch {list(cfg.patch_size)} voxels at {list(cfg.spacing_mm)} mm ({cfg.orientation} axis order), "
          "z-score over non-zero voxels")
    for w in res.warnings:
        print(f"  note: {w}")
    if res.preset:
        print(f"start stage 2 from it: a simulate config with `preset: {res.preset}`, `pretrained: {res.path}` and "
              f"`train: {{patch_size: {list(cfg.patch_size)}, spacing_mm: {list(cfg.spacing_mm)}}}`; or "
              f"`plgg-fl submit --stage plgg_finetune --init {res.path}` with such a config")
    return 0


def _rows(read_rows, path: Path) -> list:
    """``read_rows(path)``; a missing or unreadable per_case.csv is a setup error (exit 2)."""
    if not Path(path).is_file():
        raise CommandError("per_case.csv not found", path)
    try:
        return read_rows(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CommandError(f"cannot read per_case.csv: {exc}", path) from None
