"""FL benchmarks, each a ratio measured in one run on this machine.

1. ``overhead``: wall time of a federated stage in the NVFlare simulator (stage 1 at ``brats``:
   R rounds x S steps, each round validating the received model) over the same work run in-process
   through the engine (same cases, Trainer, R x (validate + S steps)). Target <= 1.15.
2. ``bytes``: bytes of model tensors each site sends per round, stage 3 (decoder only) over stage 2
   (whole network, float32), measured from what the sites actually sent (SendRecorder), tensors of
   the quantizer's state included. Target <= 0.5; with ``--quantize float16|blockwise8`` on stage 3
   (NVFlare's ModelQuantizer) target <= 0.25.

    python benchmarks/bench_fl.py                                   # both, at the defaults below
    python benchmarks/bench_fl.py --what overhead --rounds 3 --steps 30   # the demo's stage-1 size
    python benchmarks/bench_fl.py --what bytes --quantize float16 --preset nnunet --patch 64

Defaults: the demo's network and patches (``small``, 48^3 at 3 mm) and a stage of 6 rounds x 60
steps (about 2.5 minutes of training on 2 cores). The overhead ratio depends on the stage size:
NVFlare's simulator costs about 17 s per job (process start-up and teardown) plus about 1 s per
round, so short stages show a larger ratio (see docs/federated.md for both sizes measured).
The cohort is synthesized (tiny) when absent. Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

DTYPE_BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.float64": 8, "torch.uint8": 1, "torch.int8": 1,
               "float32": 4, "float16": 2, "uint8": 1}


def _manifests(cohort: Path) -> dict[str, Path]:
    sites = ("brats", "cbtn", "dfci_bch")
    if not all((cohort / s / "manifest.yaml").is_file() for s in sites):
        from plgg_fl.synth import generate_cohort

        generate_cohort(cohort, size="tiny", progress=False)
    return {s: (cohort / s / "manifest.yaml").resolve() for s in sites}


def _opts(args, rounds: int, steps: int):
    from plgg_fl.fl.recipes import StageOptions

    train = {"patch_size": [args.patch] * 3, "batch_size": args.batch, "spacing_mm": [args.spacing] * 3,
             "device": "cpu", "seed": 0, "max_steps": rounds * steps}
    return StageOptions(preset=args.preset, num_rounds=rounds, local_steps=steps, train=train)


def bench_overhead(args, manifests, work: Path) -> dict:
    import os

    import torch

    from plgg_fl.data.manifest import load_manifest
    from plgg_fl.data.validate import usable_cases
    from plgg_fl.engine import PlggUNet, TrainConfig, Trainer, validate
    from plgg_fl.fl.recipes import pretrain_recipe
    from plgg_fl.pipeline.simulate import check_training, run_in_simulator

    opts = _opts(args, args.rounds, args.steps)
    t0 = time.perf_counter()
    res = run_in_simulator(pretrain_recipe(opts), ["brats"], work / "sim", manifests, printer=lambda s: None)
    check_training(res, args.rounds)
    fed = time.perf_counter() - t0
    # the same work in-process, one compute thread like a simulated client
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    m = load_manifest(manifests["brats"])
    cfg = TrainConfig.from_dict({**opts.train, "preset": args.preset})
    model = PlggUNet(preset=args.preset)
    trainer = None
    for _ in range(args.rounds):
        validate(model, usable_cases(m, "val"), cfg)
        trainer = trainer or Trainer(model, cfg, usable_cases(m, "train"), progress=False)
        trainer.train_steps(args.steps, progress=False)
    local = time.perf_counter() - t0
    return {"federated_s": round(fed, 1), "in_process_s": round(local, 1), "overhead_ratio": round(fed / local, 3),
            "rounds": args.rounds, "steps_per_round": args.steps, "preset": args.preset}


def _sent_bytes(record_dir: Path, job: str) -> list[int]:
    out = []
    for f in sorted((record_dir / job).glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["task"] != "train" or "data" not in r:
                continue
            out.append(sum(_tensor_bytes(d) for d in r["data"].values()) + _tensor_bytes({"items": r.get("meta", {})}))
    return out


def _tensor_bytes(d: dict) -> int:
    """Bytes of the tensors a SendRecorder description holds (nested dicts/lists walked; scalars not counted)."""
    if "shape" in d:
        numel = 1
        for s in d["shape"]:
            numel *= s
        return numel * DTYPE_BYTES.get(d["dtype"], 4)
    items = d.get("items")
    vals = items.values() if isinstance(items, dict) else items if isinstance(items, list) else []
    return sum(_tensor_bytes(v) for v in vals if isinstance(v, dict))


def bench_bytes(args, manifests, work: Path) -> dict:
    from plgg_fl.fl.recipes import decoder_recipe, finetune_recipe
    from plgg_fl.pipeline.simulate import run_in_simulator

    opts = _opts(args, 1, 1)
    rec = work / "sends"
    sites = ["cbtn", "dfci_bch"]
    run_in_simulator(finetune_recipe(opts, sites=sites), sites, work / "sim", manifests, rec, printer=lambda s: None)
    s3_opts = dataclasses.replace(opts, quantize=args.quantize)
    run_in_simulator(decoder_recipe(s3_opts, sites=sites), sites, work / "sim", manifests, rec, printer=lambda s: None)
    s2, s3 = _sent_bytes(rec, "plgg_finetune"), _sent_bytes(rec, "plgg_decoder")
    return {"stage2_bytes_per_site_round": max(s2), "stage3_bytes_per_site_round": max(s3),
            "bytes_ratio_stage3_over_stage2": round(max(s3) / max(s2), 3), "preset": args.preset,
            "stage3_quantize": args.quantize}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=("overhead", "bytes", "all"), default="all")
    p.add_argument("--cohort", default="runs/cohorts/bench_tiny", help="cohort folder (tiny one synthesized if absent)")
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=60, help="local steps per round")
    p.add_argument("--patch", type=int, default=48, help="patch side, voxels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--spacing", type=float, default=3.0, help="training spacing, mm")
    p.add_argument("--quantize", choices=("float16", "blockwise8"), help="bytes: stage 3 sends through NVFlare's ModelQuantizer")
    args = p.parse_args(argv)
    manifests = _manifests(Path(args.cohort))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("bytes", "all"):
            out["bytes"] = bench_bytes(args, manifests, Path(tmp))
            print(f"bytes per site per round: stage 3 / stage 2 = {out['bytes']['bytes_ratio_stage3_over_stage2']} "
                  f"({out['bytes']['stage3_bytes_per_site_round']:,} / {out['bytes']['stage2_bytes_per_site_round']:,} B; "
                  f"stage 3 quantize {args.quantize}; target <= {0.25 if args.quantize else 0.5})")
        if args.what in ("overhead", "all"):
            out["overhead"] = bench_overhead(args, manifests, Path(tmp))
            o = out["overhead"]
            print(f"NVFlare overhead: federated / in-process = {o['overhead_ratio']} "
                  f"({o['federated_s']} s / {o['in_process_s']} s, {o['rounds']} x {o['steps_per_round']} steps; target <= 1.15)")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
