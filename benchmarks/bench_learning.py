"""How fast the engine learns: central training on the demo cohort's ``cbtn`` train split.

    python benchmarks/bench_learning.py                       # preset small at the demo's setting
    python benchmarks/bench_learning.py --presets tiny small  # one curve per preset
    python benchmarks/bench_learning.py --ablation            # the table in docs/learning.md
    python benchmarks/bench_learning.py --set optimizer=sgd --set lr=0.01   # any TrainConfig field

Trains on the ``cbtn`` train split (20 cases of the seed-0 demo cohort) with the demo config's
training settings (``simulator_configs/demo.yaml``: 48^3 patches at 3 mm, batch 2, CPU) and the
engine's defaults for everything else, validates on the 5 ``val`` cases (mean Dice, sliding window
in the original grid, what the FL client reports as ``val_dice``) at ``--eval-at`` steps, and prints
validation Dice against steps and against training seconds (validation time excluded), then the
steps and seconds to first reach val Dice 0.80 and 0.85. Target: ``small`` reaches 0.85 within 400
steps. The cohort is synthesized into ``--cohort`` when absent (seed 0, as ``plgg-fl demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.80, 0.85)

#: Ablation variants: name -> TrainConfig overrides on top of the demo settings and engine defaults.
#: "nnU-Net recipe" is the engine's setting before docs/learning.md (SGD 0.01 / momentum 0.99,
#: full augmentation from step 0, per-sample Dice, 1/3 foreground patches).
NNUNET = dict(optimizer="sgd", lr=0.01, momentum=0.99, augment="nnunet", warmup_fraction=0.0,
              batch_dice=False, foreground_ratio=1 / 3)
ADAMW = dict(NNUNET, optimizer="adamw", lr=3e-3)
ABLATION: dict[str, dict] = {
    "nnU-Net recipe (old default)": NNUNET,
    "  augmentation off": {**NNUNET, "augment": "off"},
    "  foreground patches 1/2": {**NNUNET, "foreground_ratio": 0.5},
    "AdamW 3e-3, nnU-Net aug": ADAMW,
    "AdamW 3e-3, aug off": {**ADAMW, "augment": "off"},
    "  batch Dice": {**ADAMW, "augment": "off", "batch_dice": True},
    "AdamW 1e-2, aug off": {**ADAMW, "augment": "off", "lr": 1e-2},
    "AdamW 3e-3, light aug": {**ADAMW, "augment": "light"},
    "  + 10 % LR warm-up (engine default)": {},
    "  + warm-up, aug off": {"augment": "off"},
    "  + warm-up, nnU-Net aug": {"augment": "nnunet"},
    "  + warm-up, nnU-Net aug from step 200": {"augment": "nnunet", "augment_warmup_steps": 200},
    "  + warm-up, foreground 1/2": {"foreground_ratio": 0.5},
    "  + warm-up, fp32 (no bf16 autocast)": {"cpu_bf16": False},
    "  + warm-up, 64^3 patches at 2 mm": {"patch_size": [64, 64, 64], "spacing_mm": [2.0, 2.0, 2.0]},
}


def demo_train_settings() -> dict:
    data = yaml.safe_load((ROOT / "simulator_configs" / "demo.yaml").read_text(encoding="utf-8"))
    return dict(data.get("train") or {})


def ensure_cohort(path: Path) -> Path:
    manifest = path / "cbtn" / "manifest.yaml"
    if not manifest.is_file():
        from plgg_fl.synth.cohort import generate_cohort

        generate_cohort(path, size="demo", seed=0)
    return manifest


def run_curve(preset: str, overrides: dict, manifest_path: Path, eval_at: list[int], seed: int) -> dict:
    """Train one model, validating at each step in ``eval_at``. Returns the curve and its timings."""
    from plgg_fl.data.manifest import load_manifest
    from plgg_fl.data.validate import usable_cases
    from plgg_fl.engine import PlggUNet, TrainConfig, Trainer, validate

    manifest = load_manifest(manifest_path)
    train, val = usable_cases(manifest, "train"), usable_cases(manifest, "val")
    steps = max(eval_at)
    cfg = TrainConfig.for_preset(preset, **{**demo_train_settings(), "seed": seed, "max_steps": steps, **overrides})
    torch.manual_seed(seed)
    model = PlggUNet(cfg.preset)
    trainer = Trainer(model, cfg, train, progress=False)
    curve, train_s = [], 0.0
    for target in eval_at:
        t0 = time.perf_counter()
        trainer.train_steps(target - trainer.step, progress=False)
        train_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        dice = float(validate(trainer.model, val, cfg)["val_dice"])
        curve.append({"step": target, "val_dice": round(dice, 4), "train_s": round(train_s, 1),
                      "val_s": round(time.perf_counter() - t1, 1)})
        print(f"    step {target:4d}: val Dice {dice:.3f}  ({train_s:.0f} s training)", flush=True)
    reach = {}
    for thr in THRESHOLDS:
        hit = next((c for c in curve if c["val_dice"] >= thr), None)
        reach[f"{thr:.2f}"] = {"step": hit["step"], "train_s": hit["train_s"]} if hit else None
    return {"preset": preset, "overrides": overrides, "n_train": len(train), "n_val": len(val),
            "s_per_step": round(train_s / steps, 3), "curve": curve, "reach": reach, "config": cfg.to_dict()}


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg": os.getloadavg()}


def fmt_reach(r: dict | None) -> str:
    return f"{r['step']} steps / {r['train_s']:.0f} s" if r else "not reached"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", type=Path, default=Path("runs/cohorts/demo"), help="demo cohort folder")
    p.add_argument("--presets", nargs="+", default=["small"], choices=("tiny", "small", "nnunet"))
    p.add_argument("--eval-at", default="100,200,300,400", help="comma-separated steps to validate at")
    p.add_argument("--ablation", action="store_true", help="run every ABLATION variant (preset: the first)")
    p.add_argument("--only", nargs="+", default=None, help="with --ablation: variants whose name contains any of these")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write all results here")
    args = p.parse_args(argv)
    eval_at = sorted(int(s) for s in args.eval_at.split(","))
    manifest = ensure_cohort(args.cohort)
    sets = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    runs = []
    if args.ablation:
        variants = {n: v for n, v in ABLATION.items() if not args.only or any(o in n for o in args.only)}
        jobs = [(args.presets[0], n, {**v, **sets}) for n, v in variants.items()]
    else:
        jobs = [(pr, "engine default" + (f" {sets}" if sets else ""), sets) for pr in args.presets]
    print(f"machine: {machine()}", flush=True)
    for preset, name, ov in jobs:
        print(f"[{preset}] {name}", flush=True)
        res = run_curve(preset, ov, manifest, eval_at, args.seed)
        res["name"] = name
        runs.append(res)
        print(f"  {res['s_per_step']:.2f} s/step; 0.80: {fmt_reach(res['reach']['0.80'])}; "
              f"0.85: {fmt_reach(res['reach']['0.85'])}", flush=True)
    print("\n| preset | setting | " + " | ".join(f"Dice @{s}" for s in eval_at) + " | s/step | to 0.80 | to 0.85 |")
    print("| --- | --- | " + " | ".join("---" for _ in eval_at) + " | --- | --- | --- |")
    for r in runs:
        dices = " | ".join(f"{c['val_dice']:.3f}" for c in r["curve"])
        print(f"| {r['preset']} | {r['name'].strip()} | {dices} | {r['s_per_step']:.2f} | "
              f"{fmt_reach(r['reach']['0.80'])} | {fmt_reach(r['reach']['0.85'])} |")
    print(f"machine after: loadavg {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2), encoding="utf-8")
    small = [r for r in runs if r["preset"] == "small" and not r["overrides"]]  # the engine's own defaults
    if small:
        hit = small[0]["reach"]["0.85"]
        print(f"target: small reaches val Dice 0.85 within 400 steps: {'met' if hit and hit['step'] <= 400 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
