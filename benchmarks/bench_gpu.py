"""The GPU path (issue 16), one prepared script for a machine with a CUDA GPU; prints what it measured
with the GPU's name, the torch/CUDA versions and the settings, and ``--json`` writes it.

1. **Training, side by side on the same GPU** (``nnunet`` preset network shape, 128^3 patches at 1 mm,
   batch 2, deep supervision, AMP fp16 with a GradScaler on both sides):

   * ``nnU-Net``: nnU-Net v2's own ``nnUNetTrainer`` (``initialize`` + ``train_step``) with the standard
     BraTS 3d_fullres plans (:mod:`nnunet_side`), fed ready-made random batches - its network, loss
     and optimizer step, none of its data loading or augmentation;
   * ``plgg-fl compute``: plgg-fl's ``Trainer`` on cached 128^3 toy volumes with augmentation off, so a
     step is the crop of a cached tensor plus the network, loss and optimizer step - the same work;
   * ``plgg-fl trainer``: the same ``Trainer`` with the preset's augmentation (the steps/s a site sees).

   The two compute rows alternate in blocks (``--blocks``), so clocks and other load hit both alike;
   steps/s are medians over the blocks, after ``--warmup`` steps each (cuDNN autotuning).
2. **Inference**: seconds per 1 mm 240x240x155 T2 file for ``plgg-fl predict`` (file in, mask out on the
   input grid, model loading included, TTA off), ``nnunet_v2`` network, random weights (speed does not
   depend on them); median of ``--repeats`` runs after one warm-up run. Target <= 1 s on an H100/H200.

    python benchmarks/bench_gpu.py [--json out.json]                       # on the GPU machine
    python benchmarks/bench_gpu.py --device cpu --patch 32 --steps 1 --blocks 1 --repeats 1 --shape 64 64 48
                                                                            # smoke check of the script on CPU

Needs the ``bench`` extra (nnunetv2, installed ``--no-deps`` next to a CUDA torch; README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_side  # noqa: E402 - after the path line; sets nnU-Net's environment in configure()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nnunet_trainer(patch: int, batch: int, device: torch.device):
    """nnU-Net v2's nnUNetTrainer for the BraTS 3d_fullres plans at ``patch``^3, batch ``batch``, initialised."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from plgg_fl.engine.nnunet_plans import BINARY, T2_ONLY, brats_architecture, dataset_for, plans_for

    plans = plans_for(brats_architecture(), (patch,) * 3, nnunet_side.SPACING, 1)
    plans["configurations"]["3d_fullres"]["batch_size"] = batch
    plans["continue_training"] = False  # what nnU-Net's run_training puts in before building its trainer
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_for(T2_ONLY, BINARY), device=device)
    # initialize() picks its dataset class from the preprocessed folder's file endings; no case is ever
    # read here (batches are handed to train_step), so one empty file of the blosc2 kind stands in
    folder = Path(trainer.preprocessed_dataset_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "placeholder.b2nd").touch()
    trainer.initialize()
    return trainer


def nnunet_batch(trainer, patch: int, batch: int, device: torch.device) -> dict:
    """A random batch in the form nnU-Net's data loader hands ``train_step``: data [B, 1, P, P, P] and one
    target [B, 1, ...] (labels 0/1) per deep-supervision output, at that output's size (read from one
    forward of the trainer's network)."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(batch, 1, patch, patch, patch, generator=g)
    full = (torch.rand(batch, 1, patch, patch, patch, generator=g) > 0.9).float()
    with torch.no_grad():
        outputs = trainer.network(data[:1].to(device))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    targets = [torch.nn.functional.interpolate(full, size=tuple(o.shape[2:]), mode="nearest") for o in outputs]
    return {"data": data, "target": targets}


def plgg_trainer(work: Path, patch: int, batch: int, device: torch.device, augment: str):
    """plgg-fl's Trainer, ``nnunet`` preset, on two cached ``patch``^3 1 mm toy volumes."""
    from plgg_fl.engine import PlggUNet, TrainConfig, Trainer
    from plgg_fl.engine.toydata import write_toy_case

    cases = [write_toy_case(work / "toy", f"t{i}", seed=i, shape=(patch,) * 3, spacing_mm=(1.0, 1.0, 1.0)) for i in range(2)]
    cfg = TrainConfig.for_preset("nnunet", patch_size=[patch] * 3, batch_size=batch, device=device.type, augment=augment,
                                 num_workers=0, max_steps=10_000)
    return Trainer(PlggUNet(preset="nnunet"), cfg, cases, progress=False)


def steps_per_s(step, n: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return n / (time.perf_counter() - t0)


def training(args, work: Path, device: torch.device) -> dict:
    nn_trainer = nnunet_trainer(args.patch, args.batch, device)
    nn_batch = nnunet_batch(nn_trainer, args.patch, args.batch, device)
    nn_trainer.network.train()
    compute = plgg_trainer(work, args.patch, args.batch, device, augment="off")
    rows: dict[str, list[float]] = {"nnU-Net nnUNetTrainer.train_step": [], "plgg-fl Trainer, augmentation off": []}
    for _ in range(args.blocks):  # alternate, so both meet the same clocks and load
        rows["nnU-Net nnUNetTrainer.train_step"].append(
            steps_per_s(lambda: nn_trainer.train_step(nn_batch), args.steps, args.warmup, device))
        rows["plgg-fl Trainer, augmentation off"].append(
            steps_per_s(lambda: compute.train_steps(1, progress=False), args.steps, args.warmup, device))
    real = plgg_trainer(work, args.patch, args.batch, device, augment="nnunet")
    rows["plgg-fl Trainer, preset augmentation"] = [steps_per_s(lambda: real.train_steps(1, progress=False), args.steps, args.warmup, device)]
    out = {name: {"steps_per_s": statistics.median(v), "blocks": v} for name, v in rows.items()}
    nn = out["nnU-Net nnUNetTrainer.train_step"]["steps_per_s"]
    out["ratio_plgg_compute_over_nnunet"] = out["plgg-fl Trainer, augmentation off"]["steps_per_s"] / nn
    return out


def inference(args, work: Path, device: torch.device) -> dict:
    from bench_predict import make_volume

    from plgg_fl.engine import PlggUNet, TrainConfig, save_checkpoint
    from plgg_fl.predict.run import PredictOptions, predict_inputs

    vol = work / "t2_1mm.nii.gz"
    make_volume(vol, shape=tuple(args.shape))
    cfg = TrainConfig.for_preset("nnunet_v2", device=device.type)
    ckpt = save_checkpoint(work / "nnunet_v2.pt", PlggUNet(preset="nnunet_v2"), cfg)
    opts = PredictOptions(tta=False, device=device.type, progress=False, overwrite=True)
    times = []
    for i in range(args.repeats + 1):  # the first run warms CUDA up (context, cuDNN autotuning) and is not counted
        sync(device)
        t0 = time.perf_counter()
        summary = predict_inputs([vol], ckpt, work / "out", opts)
        sync(device)
        if summary.exit_code != 0:
            raise SystemExit(f"predict failed: {[r.error for r in summary.results]}")
        if i:
            times.append(time.perf_counter() - t0)
    return {"seconds_per_volume": statistics.median(times), "runs": times, "shape": list(args.shape), "tta": False}


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["gpu"] = None
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke check of the script only)")
    ap.add_argument("--patch", type=int, default=128, help="training patch side in voxels (default 128)")
    ap.add_argument("--batch", type=int, default=2, help="training batch (default 2, nnU-Net 3d_fullres's)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per block (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each block (default 5)")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks per trainer (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="timed predict runs after one warm-up (default 3)")
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="inference volume in voxels (1 mm)")
    ap.add_argument("--skip", choices=("training", "inference"), help="leave one part out")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine (--device cpu runs a smoke check)")
    with tempfile.TemporaryDirectory(prefix="plgg_gpu_") as tmp:
        work = Path(tmp)
        nnunet_side.configure(torch.get_num_threads(), work)
        result = {"machine": machine(device), "settings": vars(args) | {"json": str(args.json) if args.json else None}}
        print(f"device: {result['machine'].get('gpu') or 'CPU'}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
              f"load {os.getloadavg()[0]:.1f}")
        if args.skip != "training":
            result["training"] = tr = training(args, work, device)
            print(f"training, {args.patch}^3 patches at 1 mm, batch {args.batch}, deep supervision, AMP on CUDA:")
            for name, row in tr.items():
                if isinstance(row, dict):
                    print(f"  {name:40s} {row['steps_per_s']:7.2f} steps/s  (blocks {', '.join(f'{v:.2f}' for v in row['blocks'])})")
            print(f"  plgg-fl / nnU-Net (same work per step): {tr['ratio_plgg_compute_over_nnunet']:.2f}x")
        if args.skip != "inference":
            result["inference"] = inf = inference(args, work, device)
            print(f"predict, nnunet_v2, {'x'.join(map(str, args.shape))} at 1 mm, TTA off: {inf['seconds_per_volume']:.2f} s per volume "
                  f"(runs {', '.join(f'{t:.2f}' for t in inf['runs'])}; target <= 1 s on an H100/H200)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"results -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
