"""Engine speed on this machine, per preset, against a naive MONAI baseline measured in the same run.

Inference: seconds per 1 mm 240x240x155 T2 volume (file on disk -> mask on the input grid).
  naive      MONAI as it comes: same network, same window (the preset's patch) and overlap 0.5,
             Gaussian blending, fp32, sw_batch_size=1, the whole resampled volume windowed
             (no crop to the brain); same resampling/normalisation/inversion code.
  optimised  crop to the brain's non-zero bounding box, batched windows (cfg.sw_batch_size),
             bf16 autocast / channels_last_3d only where the micro-benchmark below measured them faster.
Training: optimizer steps per second (batch of the preset's patch size).
  naive      fp32, every step reloads and preprocesses its volumes (MONAI Dataset, no cache).
  optimised  preprocessed volumes cached in memory (CacheDataset) + the faster precision/layout.

tiny and small run at their configured 2 mm grid (the 1 mm input is resampled, as in use), nnunet at
1 mm with 128^3 windows. nnunet on CPU is bounded: no precision/layout micro-benchmark (bf16 "auto",
no channels_last) unless ``--nnunet-micro``; its inference time is *estimated* from the measured
pre/post-processing time plus the number of window batches times the measured time of the first
``--nnunet-batches`` batches (printed as "est."), and it trains ``--nnunet-steps`` steps at batch 1.

    python benchmarks/bench_engine.py [--presets tiny,small,nnunet] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from plgg_fl.engine import PlggUNet, TrainConfig, Trainer, predict
from plgg_fl.engine.infer import _load
from plgg_fl.engine.transforms import IMAGE, preprocess

warnings.filterwarnings("ignore")

SHAPE = (240, 240, 155)


def write_volume(out: Path, seed: int) -> dict[str, str]:
    """A 1 mm 240x240x155 T2-like volume: brain ellipsoid (semi-axes 68/85/62 mm, ~BraTS brain extent)
    on a zero background with a bright 15-20 mm radius tumour."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.arange(n) + 0.5 for n in SHAPE], indexing="ij")
    c = np.array(SHAPE) / 2
    brain = ((g[0] - c[0]) / 68) ** 2 + ((g[1] - c[1]) / 85) ** 2 + ((g[2] - c[2]) / 62) ** 2 <= 1
    tc = c + rng.uniform(-25, 25, 3)
    r = rng.uniform(15, 20)
    tumour = ((g[0] - tc[0]) ** 2 + (g[1] - tc[1]) ** 2 + (g[2] - tc[2]) ** 2 <= r * r) & brain
    img = np.where(brain, 100 + rng.normal(0, 10, SHAPE), 0).astype(np.float32)
    img[tumour] += 80
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    ip, lp = out / f"vol{seed}_t2.nii.gz", out / f"vol{seed}_seg.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(ip))
    nib.save(nib.Nifti1Image(tumour.astype(np.uint8), aff), str(lp))
    return {"image": str(ip), "label": str(lp), "key": f"vol{seed}"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def micro(model: PlggUNet, cfg: TrainConfig, reps: int = 2) -> dict[str, dict[tuple[bool, bool], float]]:
    """Best-of-``reps`` seconds of one window batch (inference) and one fwd+bwd (training) for
    (channels_last, low precision) in all four combinations, interleaved to share the machine's noise.
    Low precision = bf16 autocast on CPU, fp16 autocast (AMP) on CUDA."""
    dev = cfg.torch_device()
    lp = torch.float16 if dev.type == "cuda" else torch.bfloat16
    p = tuple(cfg.patch_size)
    xi = torch.randn(cfg.sw_batch_size, 1, *p, device=dev)
    xt = torch.randn(cfg.batch_size, 1, *p, device=dev)
    res: dict[str, dict] = {"infer": {}, "train": {}}
    for rep in range(reps + (dev.type == "cuda")):  # one untimed warm-up round on CUDA
        for cl, bf in itertools.product((False, True), (False, True)):
            fmt = torch.channels_last_3d if cl else torch.contiguous_format
            m = model.to(memory_format=fmt)
            for kind, x in (("infer", xi), ("train", xt)):
                x = x.contiguous(memory_format=fmt)
                _sync(dev)
                t = time.perf_counter()
                if kind == "infer":
                    m.eval()
                    with torch.inference_mode(), torch.autocast(dev.type, lp, enabled=bf):
                        m(x)
                else:
                    m.train()
                    with torch.autocast(dev.type, lp, enabled=bf):
                        out = m(x)
                    out.float().mean().backward()
                    m.zero_grad(set_to_none=True)
                _sync(dev)
                dt = time.perf_counter() - t
                if dev.type == "cuda" and rep == 0:
                    continue
                res[kind][(cl, bf)] = min(dt, res[kind].get((cl, bf), math.inf))
    model.to(memory_format=torch.contiguous_format)
    return res


def n_window_batches(image: str, cfg: TrainConfig) -> tuple[int, tuple[int, ...]]:
    from monai.inferers.utils import _get_scan_interval
    from monai.data.utils import dense_patch_slices

    x = preprocess(cfg, with_label=False, load=False)({IMAGE: _load(image)})[IMAGE]
    shape = tuple(max(s, p) for s, p in zip(x.shape[1:], cfg.patch_size))
    scan = _get_scan_interval(shape, tuple(cfg.patch_size), 3, (cfg.sw_overlap,) * 3)
    n = len(dense_patch_slices(shape, tuple(cfg.patch_size), scan))
    return math.ceil(n / cfg.sw_batch_size), tuple(x.shape[1:])


class _Counting(torch.nn.Module):
    """Wraps a model; after ``limit`` calls returns zeros instantly (to time pre/post-processing)."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit, self.calls, self.times = model, limit, 0, []

    def forward(self, x):
        self.calls += 1
        if self.calls > self.limit:
            return torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype)
        w, c = _clocks()
        out = self.model(x)
        w2, c2 = _clocks()
        self.times.append((w2 - w, c2 - c))
        return out


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def time_inference(model, image, cfg, estimate_batches: int | None) -> dict[str, float]:
    """Wall and process-CPU seconds (all threads) of one predict(); CPU time is what to compare on a
    shared machine, wall time is what a user waits."""
    n_batches, grid = n_window_batches(image, cfg)
    if estimate_batches is None or estimate_batches >= n_batches:
        dev = next(model.parameters()).device
        if dev.type == "cuda":
            predict(model, image, cfg)  # warm-up (cuDNN autotuning, allocator)
        _sync(dev)
        w, c = _clocks()
        predict(model, image, cfg)
        _sync(dev)
        w2, c2 = _clocks()
        return {"seconds": w2 - w, "cpu_seconds": c2 - c, "window_batches": n_batches, "grid": grid, "estimated": False}
    wrapped = _Counting(model, estimate_batches)
    w, c = _clocks()
    predict(wrapped, image, cfg)
    w2, c2 = _clocks()
    k = len(wrapped.times)
    per_w, per_c = float(np.mean([t[0] for t in wrapped.times])), float(np.mean([t[1] for t in wrapped.times]))
    est_w = (w2 - w) - sum(t[0] for t in wrapped.times) + per_w * n_batches
    est_c = (c2 - c) - sum(t[1] for t in wrapped.times) + per_c * n_batches
    return {"seconds": est_w, "cpu_seconds": est_c, "window_batches": n_batches, "grid": grid, "estimated": True,
            "per_batch_s": per_w, "batches_run": k}


def time_training(cfg: TrainConfig, cases, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    t = time.perf_counter()
    trainer = Trainer(PlggUNet(cfg.preset), cfg, cases, progress=False)
    setup = time.perf_counter() - t
    if warmup:
        trainer.train_steps(warmup, progress=False)
    _sync(trainer.device)
    w, c = _clocks()
    trainer.train_steps(steps, progress=False)
    _sync(trainer.device)
    w2, c2 = _clocks()
    return {"steps_per_s": steps / (w2 - w), "steps_per_cpu_s": steps / (c2 - c), "steps": steps, "setup_s": setup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small,nnunet")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps (tiny, small)")
    ap.add_argument("--nnunet-steps", type=int, default=1)
    ap.add_argument("--nnunet-batches", type=int, default=2, help="window batches actually run for nnunet inference")
    ap.add_argument("--nnunet-micro", action="store_true", help="also micro-benchmark nnunet precision/layout on CPU (slow)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.device == "cuda":
        print(f"GPU {torch.cuda.get_device_name()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f} (shared machine: "
          "compare CPU seconds)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [write_volume(Path(tmp), s) for s in (0, 1)]
        for preset in args.presets.split(","):
            cuda = args.device == "cuda"
            big = preset == "nnunet" and not cuda
            base = TrainConfig.for_preset(preset, optimizer="sgd", augment=True, num_workers=0, device=args.device)
            if big:
                base = base.replace(batch_size=1)
            torch.manual_seed(0)
            model = PlggUNet(preset).to(base.torch_device())
            if big and not args.nnunet_micro:  # bounded: no micro-benchmark, bf16 "auto", no channels_last
                auto = base.use_cpu_bf16()
                mb = {"infer": {(False, auto): math.nan}, "train": {(False, auto): math.nan}}
            else:
                mb = micro(model, base, reps=1 if big else 2)
            fmt = lambda d: ", ".join(f"cl={int(k[0])} lowp={int(k[1])}: {v:.3f}s" for k, v in d.items())  # noqa: E731
            print(f"\n[{preset}] micro (one window batch of {base.sw_batch_size} / one train step of {base.batch_size}; "
                  f"cl = channels_last_3d, lowp = {'fp16 AMP' if cuda else 'bf16 autocast'}):")
            print(f"  infer  {fmt(mb['infer'])}\n  train  {fmt(mb['train'])}")
            ci, bi = min(mb["infer"], key=mb["infer"].get)
            ct, bt = min(mb["train"], key=mb["train"].get)
            naive = base.replace(crop_to_brain=False, sw_batch_size=1, cpu_bf16=False, amp=False, channels_last=False,
                                 cache_rate=0.0)
            opt_inf = base.replace(cpu_bf16=bi, amp=bi, channels_last=ci)
            opt_tr = base.replace(cpu_bf16=bt, amp=bt, channels_last=ct)
            if cuda:
                opt_inf = opt_inf.replace(sw_batch_size=4)
            model.eval()
            est = args.nnunet_batches if big else None
            ni = time_inference(model.to(memory_format=torch.contiguous_format), cases[0]["image"], naive, est)
            oi = time_inference(model.to(memory_format=torch.channels_last_3d if ci else torch.contiguous_format),
                                cases[0]["image"], opt_inf, est)
            model.to(memory_format=torch.contiguous_format)
            steps = args.nnunet_steps if big else args.steps
            warm = 0 if big else 2
            nt = time_training(naive, cases, steps, warm)
            ot = time_training(opt_tr, cases, steps, warm)
            e = " (est.)" if ni["estimated"] else ""
            print(f"  inference s/volume (wall | cpu): naive {ni['seconds']:.1f} | {ni['cpu_seconds']:.1f}{e} "
                  f"({ni['window_batches']} batches on {ni['grid']}) ; optimised {oi['seconds']:.1f} | "
                  f"{oi['cpu_seconds']:.1f}{e} ({oi['window_batches']} batches on {oi['grid']}, lowp={bi}, "
                  f"channels_last={ci}) ; speedup wall x{ni['seconds'] / oi['seconds']:.2f}, "
                  f"cpu x{ni['cpu_seconds'] / oi['cpu_seconds']:.2f}")
            print(f"  training steps/s (wall | per cpu-s): naive {nt['steps_per_s']:.3f} | {nt['steps_per_cpu_s']:.3f} ; "
                  f"optimised {ot['steps_per_s']:.3f} | {ot['steps_per_cpu_s']:.3f} (cache, lowp={bt}, "
                  f"channels_last={ct}; cache fill {ot['setup_s']:.1f}s) ; speedup wall "
                  f"x{ot['steps_per_s'] / nt['steps_per_s']:.2f}, cpu x{ot['steps_per_cpu_s'] / nt['steps_per_cpu_s']:.2f}")
            results[preset] = {
                "micro": {k: {f"cl={int(a)},bf16={int(b)}": v for (a, b), v in d.items()} for k, d in mb.items()},
                "inference_naive": ni, "inference_optimised": oi, "train_naive": nt, "train_optimised": ot,
                "inference_speedup_wall": ni["seconds"] / oi["seconds"],
                "inference_speedup_cpu": ni["cpu_seconds"] / oi["cpu_seconds"],
                "train_speedup_wall": ot["steps_per_s"] / nt["steps_per_s"],
                "train_speedup_cpu": ot["steps_per_cpu_s"] / nt["steps_per_cpu_s"],
                "choice": {"infer_bf16": bi, "infer_channels_last": ci, "train_bf16": bt, "train_channels_last": ct},
            }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
