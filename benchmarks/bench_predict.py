"""End-to-end inference speed: ``plgg-fl predict``'s path vs the naive MONAI path, same run, same model.

Per 1 mm 240x240x155 T2 volume (skull-stripped, float32 NIfTI): read, preprocess, infer, write the
mask. Both paths use the same network, window (the preset's patch), overlap (0.5) and Gaussian
weighting; the naive path is MONAI as documented: load -> orient -> resample -> z-score ->
``sliding_window_inference`` over the whole volume (fp32, one window per forward) -> invert -> save.
The predict path adds: the model runs on the brain's bounding box only, bf16 autocast on CPUs with
native bf16 (``--precision auto``), the model's windows per forward (2 for small/nnunet) - i.e.
exactly what ``plgg-fl predict`` does by default.

Models: ``small`` (the demo preset) and ``nnunet``, each trained for a few dozen steps on bright-blob
volumes so the masks are non-trivial (speed does not depend on the weights; the agreement check
does). Checkpoints are cached in ``--work`` so reruns skip training. Prints seconds per volume, the
ratio (target >= 4x) and the Dice between the two paths' masks (target >= 0.995) and against the
blob's true tumour. Timings on a shared machine are noisy: load average and process CPU time are
printed too (CPU time is steadier than wall time when other jobs compete for the cores).

    python benchmarks/bench_predict.py [--presets small nnunet] [--repeats 1] [--work /tmp/plgg_bench]

The Dice target needs a model that has learned what a brain looks like (a briefly trained blob model
fires anywhere outside the brain, where only the naive path looks). ``--checkpoint`` benchmarks a
trained engine checkpoint instead - e.g. the demo's federated stepwise model - with its own window,
spacing and overlap, on ``--cases`` held-out pediatric test cases of the synthetic cohort (``cbtn``
and ``dfci_bch`` test split, seed 0: never trained on) rendered with their site's contrast on a
1 mm 240x240x155 grid. Dice is then also scored against each case's reference (the majority of the
three experts for ``dfci_bch``), for both paths:

    plgg-fl demo    # writes runs/demo/models/stepwise.pt
    python benchmarks/bench_predict.py --checkpoint runs/demo/models/stepwise.pt

``--against nnunet`` (needs the ``bench`` extra: nnunetv2) compares with nnU-Net v2's own predictor instead:
one nnU-Net 3d_fullres PlainConvUNet of the standard BraTS plans (32..320 filters, 128^3 patch, 1 mm,
~31 M parameters; ``benchmarks/nnunet_side.py``) written as an nnU-Net results folder and imported with
``plgg-fl import-nnunet`` (preset ``nnunet_v2``), so both tools run the same weights on the same 1 mm T2
file, file in and file out: nnU-Net's ``nnUNetPredictor`` (tile step 0.5, Gaussian) vs ``plgg-fl predict``
(overlap 0.5, Gaussian, ``--precision``), same torch threads (nnU-Net's own cap ``nnUNet_def_n_proc`` set to
them), test-time mirroring (8 flips in both) off and on. The weights are the ``nnunet_v2`` blob model
trained briefly as above (``--nnunet-weights trained``, so masks are not noise) or nnU-Net's random init.
Prints seconds (wall, CPU), forward passes and windows of each, the ratio nnU-Net / plgg-fl (target >= 2)
and the Dice of plgg-fl predict's mask against the engine's unoptimised path (whole volume, fp32, one
window per forward; target >= 0.995), and the two tools' Dice (same weights; inside the brain it shows
the preprocessing matches). Writes ``bench_predict_nnunet.json`` into ``--work``.

    python benchmarks/bench_predict.py --against nnunet [--mirroring off|on|both] [--threads N] [--shape 96 96 80]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from plgg_fl.engine.infer import inference_memory_format, model_memory_format
from plgg_fl.predict.run import PredictOptions, inference_config

SHAPE, SPACING = (240, 240, 155), (1.0, 1.0, 1.0)
#: preset -> (training patch, training spacing mm, steps, blob cases) for the brief training
TRAIN = {"tiny": ((32,) * 3, None, 40, 3), "small": ((32,) * 3, None, 40, 3), "nnunet": ((64,) * 3, (1.0,) * 3, 16, 2)}
TRAIN["nnunet_v2"] = TRAIN["nnunet"]  # nnunet + transposed-conv bias: what an nnU-Net 3d_fullres model imports as


def make_volume(path: Path, seed: int = 7, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A 1 mm skull-stripped 'T2' of ``shape`` voxels (RAS); at 240x240x155 the brain is ~136x168x124 mm with
    a ~24 ml tumour, on other grids both scale with the grid. Returns the tumour (uint8, ``shape``)."""
    from plgg_fl.engine.toydata import blob_volume

    scale = [n / m for n, m in zip(shape, SHAPE)]
    semi = tuple(s * f for s, f in zip((68, 84, 62), scale))
    img, seg, aff = blob_volume(tuple(shape), SPACING, seed=seed, brain_semi_mm=semi, tumour_radius_mm=18 * min(scale))
    nib.save(nib.Nifti1Image(img, aff), str(path))
    return seg


def cohort_volumes(work: Path, n: int, cohort: Path) -> list[tuple[str, Path, np.ndarray]]:
    """``n`` (0: all) held-out test cases of a synthetic cohort (alternately cbtn, dfci_bch) on a 1 mm
    240x240x155 grid: the cohort's own test images (never trained on) resampled linearly onto that
    grid (same world space, centred), references by nearest neighbour. Returns (name, path,
    reference mask); the dfci_bch reference is the voxel-wise majority of its three experts."""
    from nibabel.processing import resample_from_to

    from plgg_fl.data.manifest import load_manifest

    grid = np.diag([*SPACING, 1.0])
    grid[:3, 3] = -(np.asarray(SHAPE) - 1) / 2.0 * np.asarray(SPACING)
    tests = {site: load_manifest(cohort / site / "manifest.yaml").split("test") for site in ("cbtn", "dfci_bch")}
    pairs = [(site, c[k]) for k in range(max(map(len, tests.values()))) for site, c in tests.items() if k < len(c)]
    out = []
    for site, case in pairs[: n or None]:
        path = work / f"{case.key}_t2_240x240x155_1mm.nii.gz"
        refs = [np.asarray(resample_from_to(nib.load(str(m)), (SHAPE, grid), order=0).dataobj) > 0 for m in case.masks.values()]
        ref = (np.sum(refs, axis=0) * 2 > len(refs)).astype(np.uint8)
        if not path.exists():
            img = resample_from_to(nib.load(str(case.image)), (SHAPE, grid), order=1, cval=0.0)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), grid), str(path))
        out.append((case.key, path, ref))
    return out


def checkpoint_model(ckpt: Path, device: str = "cpu"):
    """(model, inference TrainConfig) of a trained checkpoint with its own window, spacing and overlap;
    TTA and keep-largest off in both paths (they are options, not what is compared)."""
    from plgg_fl.engine.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(ckpt, device=device)
    return model, cfg.replace(device=device, cpu_bf16=False, tta=False, keep_largest=False)


def get_model(preset: str, work: Path, device: str = "cpu", steps: int | None = None, full_fov: bool = False):
    """(model, inference TrainConfig with the preset's own window/spacing) - trained briefly, cached.

    ``full_fov``: train on whole volumes (``crop_to_brain=False``), so the network sees the empty
    background that the naive whole-volume path shows it; by default models train as the engine
    does (cropped to the brain, like nnU-Net), and never see large empty regions."""
    from plgg_fl.engine.checkpoint import load_checkpoint
    from plgg_fl.engine.config import PRESET_DEFAULTS
    from plgg_fl.engine.toydata import train_blob_model

    patch, spacing, default_steps, n = TRAIN[preset]
    steps = steps or default_steps
    ckpt = work / f"{preset}_blobs_{steps}steps{'_fullfov' if full_fov else ''}.pt"
    if not ckpt.exists():
        t0 = time.perf_counter()
        sp = spacing or PRESET_DEFAULTS[preset]["spacing_mm"]
        fov = [int(round(2 * p * s)) for p, s in zip(patch, sp)]  # blobs twice the patch's field of view
        # the engine's own preprocessing (crop to the brain box, z-score over the brain), as real models
        blob_kw = dict(shape_ras=tuple(fov), spacing_mm=(1.0,) * 3)
        train_blob_model(
            ckpt, preset=preset, steps=steps, n_cases=n, blob_kw=blob_kw, patch_size=patch,
            batch_size=1 if preset.startswith("nnunet") else 2, device=device, crop_to_brain=not full_fov,
        )
        print(f"  trained {preset} for {steps} steps in {time.perf_counter() - t0:.0f} s -> {ckpt}", flush=True)
    model, cfg, _ = load_checkpoint(ckpt, device=device)
    d = PRESET_DEFAULTS[preset]
    return model, cfg.replace(device=device, patch_size=tuple(d["patch_size"]), spacing_mm=tuple(d["spacing_mm"]),
                              sw_batch_size=d["sw_batch_size"], cpu_bf16=False, tta=False, keep_largest=False)


def naive_monai(model, cfg, src: Path, dst: Path) -> np.ndarray:
    """The baseline: MONAI's documented path over the whole volume, fp32, one window per forward."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureTyped, Invertd, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd

    chain = Compose(
        [
            LoadImaged("image", ensure_channel_first=True, image_only=True),
            EnsureTyped("image", dtype="float32", track_meta=True),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=cfg.spacing_mm, mode="bilinear"),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    data = chain({"image": str(src)})
    x = data["image"][None].as_tensor().to(next(model.parameters()).device)
    with torch.inference_mode():
        logits = sliding_window_inference(x, cfg.patch_size, 1, model, overlap=cfg.sw_overlap, mode="gaussian")
    data["pred"] = MetaTensor(torch.softmax(logits, 1)[0, 1:2].cpu(), affine=data["image"].affine)
    prob = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(data)["pred"]
    mask = (np.asarray(prob[0]) > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, nib.load(str(src)).affine), str(dst))
    return mask


def plgg_predict(model, cfg, src: Path, out: Path, opts) -> np.ndarray:
    """``plgg-fl predict``'s per-scan path (read, checks, brain box, engine inference, atomic write)."""
    from plgg_fl.predict.io import ScanInput
    from plgg_fl.predict.run import segment_scan

    segment_scan(model, cfg, ScanInput("bench", src, "nifti"), out, opts)
    return np.asarray(nib.load(str(out / "bench_mask.nii.gz")).dataobj)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def time_case(model, cfg, fast_cfg, opts, src: Path, out: Path, truth: np.ndarray, repeats: int, attribute: bool) -> dict:
    """Both paths on one volume: seconds (wall and CPU, median of ``repeats``) and Dice."""
    naive_t, fast_t, naive_cpu, fast_cpu = [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        m_naive = naive_monai(model, cfg, src, out / "naive_mask.nii.gz")
        naive_t.append(time.perf_counter() - t0)
        naive_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        m_fast = plgg_predict(model, fast_cfg, src, out, opts)
        fast_t.append(time.perf_counter() - t0)
        fast_cpu.append(time.process_time() - c0)
    brain = np.asarray(nib.load(str(src)).dataobj) > 0
    r = {
        "naive_s": float(np.median(naive_t)), "predict_s": float(np.median(fast_t)),
        "naive_cpu_s": float(np.median(naive_cpu)), "predict_cpu_s": float(np.median(fast_cpu)),
        "dice_predict_vs_naive": dice(m_fast, m_naive),
        "dice_predict_vs_naive_in_brain": dice(m_fast, m_naive & brain),
        "dice_naive_vs_truth": dice(m_naive, truth), "dice_predict_vs_truth": dice(m_fast, truth),
        "naive_voxels_outside_brain": int((m_naive.astype(bool) & ~brain).sum()),
    }
    if attribute:  # which part changes the mask: the brain box, or bf16 + batched windows?
        fp32_opts = PredictOptions(overwrite=True, progress=False, precision="fp32", sw_batch_size=1, crop=opts.crop)
        t0 = time.perf_counter()
        m_fp32 = plgg_predict(model, inference_config(cfg, fp32_opts), src, out, fp32_opts)
        r["predict_fp32_sw1_s"] = time.perf_counter() - t0
        r["dice_bf16_batched_vs_fp32"] = dice(m_fast, m_fp32)
        r["dice_box_fp32_vs_naive"] = dice(m_fp32, m_naive)
        plain = PredictOptions(overwrite=True, progress=False, precision="fp32", sw_batch_size=1, crop=False,
                               hot_box=False)  # engine as is
        m_plain = plgg_predict(model, inference_config(cfg, plain), src, out, plain)
        r["dice_precrop_vs_engine_plain"] = dice(m_fp32, m_plain)
        r["dice_engine_plain_vs_truth"] = dice(m_plain, truth)  # what the engine's evaluator scores
        r["dice_predict_vs_engine_plain"] = dice(m_fast, m_plain)
        print(f"    attribution: bf16+batched vs fp32 (both brain box) Dice {r['dice_bf16_batched_vs_fp32']:.4f}; "
              f"brain box vs whole volume (both fp32) Dice {r['dice_box_fp32_vs_naive']:.4f}; "
              f"brain box alone: {r['naive_s'] / r['predict_fp32_sw1_s']:.2f}x; pre-crop vs the engine's own path "
              f"(which crops after resampling) Dice {r['dice_precrop_vs_engine_plain']:.4f}", flush=True)
    return r


# ----------------------------------------------------------------------------- --against nnunet

def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (nnU-Net's spawned workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForwardCounter:
    """Counts whole-network forward calls and the windows (batch items) they take, for plgg-fl's PlggUNet and
    nnU-Net's PlainConvUNet, through a global module hook (microseconds per call; a forward takes seconds)."""

    NETWORKS = ("PlggUNet", "PlainConvUNet")

    def __enter__(self) -> "ForwardCounter":
        self.calls = self.windows = 0
        self.threads: set[int] = set()  # torch threads in effect during the forwards
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(self._count)
        return self

    def _count(self, module, args) -> None:
        if type(module).__name__ in self.NETWORKS:
            self.calls += 1
            self.windows += int(args[0].shape[0])
            self.threads.add(torch.get_num_threads())

    def __exit__(self, *exc) -> None:
        self._hook.remove()


def timed(fn, repeats: int) -> dict:
    """``fn()`` (returns a mask) ``repeats`` times: median wall and CPU seconds, forward calls, windows and torch
    threads of the last run, load average (1 min) before and after, and the last mask."""
    wall, cpu, load0 = [], [], os.getloadavg()[0]
    for _ in range(repeats):
        with ForwardCounter() as fc:
            t0, c0 = time.perf_counter(), cpu_seconds()
            mask = fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
    return {"s": float(np.median(wall)), "cpu_s": float(np.median(cpu)), "forwards": fc.calls, "windows": fc.windows,
            "threads": sorted(fc.threads), "load_before": load0, "load_after": os.getloadavg()[0], "mask": mask}


def plgg_file(ckpt: Path, src: Path, out: Path, opts) -> np.ndarray:
    """``plgg-fl predict``'s whole path (:func:`predict_inputs`: model load, read, checks, engine, write,
    reports) on one file; returns the mask written (uint8, the input's shape)."""
    from plgg_fl.predict.run import predict_inputs

    summary = predict_inputs([src], ckpt, out, opts)
    res = summary.results[0]
    if res.status != "ok":
        raise RuntimeError(f"plgg-fl predict failed: {res.error}")
    return np.asarray(nib.load(res.mask).dataobj).astype(np.uint8)


def nnunet_models(work: Path, weights: str, train_steps: int | None) -> tuple[Path, Path, dict]:
    """(nnU-Net results folder, the same weights imported as a plgg-fl checkpoint, what the import made of
    them); written once per ``weights`` ("random": nnU-Net's init; "trained": :func:`get_model`'s briefly
    trained ``nnunet_v2`` blob model, written into nnU-Net's network and checked to import back exactly)."""
    import nnunet_side

    from plgg_fl.engine.checkpoint import load_checkpoint
    from plgg_fl.engine.nnunet_import import import_nnunet

    trained = get_model("nnunet_v2", work, "cpu", train_steps)[0].state_dict() if weights == "trained" else None
    tag = f"trained{train_steps or TRAIN['nnunet_v2'][2]}steps" if trained is not None else "random"
    folder = nnunet_side.write_model(work / f"nnunet_results_{tag}", trained)
    ckpt = work / f"nnunet_{tag}_imported.pt"
    if not ckpt.is_file():
        import_nnunet(folder, ckpt, fold=0)
    model, cfg, meta = load_checkpoint(ckpt)
    back = model.state_dict()
    if trained is not None and not (back.keys() == trained.keys() and all(torch.equal(back[k], trained[k]) for k in back)):
        raise RuntimeError(f"{folder}: plgg-fl -> nnU-Net -> plgg-fl weights do not round-trip exactly")
    info = {"weights": weights, "preset": cfg.preset, "parameters": sum(p.numel() for p in model.parameters()),
            "patch": list(cfg.patch_size), "spacing_mm": list(cfg.spacing_mm), "sw_overlap": cfg.sw_overlap,
            "sw_batch_size": cfg.sw_batch_size, "crop_to_brain": cfg.crop_to_brain, "axes": meta["nnunet"]["axes"],
            "import_warnings": meta["nnunet"]["warnings"], "round_trip_exact": True if trained is not None else None}
    return folder, ckpt, info


def warm_up(predictor, ckpt: Path, bf16: bool) -> None:
    """One untimed forward per network and precision: oneDNN picks its kernels on first use."""
    from plgg_fl.engine.checkpoint import load_checkpoint

    model, cfg, _ = load_checkpoint(ckpt)
    x = torch.zeros(cfg.sw_batch_size, 1, *cfg.patch_size)
    with torch.inference_mode():
        predictor.network.eval()(x[:1])
        model.eval()(x[:1])
    if bf16:  # in the memory format predict runs it in (channels-last on CPU with bf16)
        fmt = inference_memory_format(torch.device("cpu"), cfg.replace(cpu_bf16=True))
        with model_memory_format(model, fmt), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x.contiguous(memory_format=fmt))


def compare_nnunet(mirroring: bool, predictor, ckpt: Path, src: Path, truth: np.ndarray, work: Path, args, log: Path) -> dict:
    """nnU-Net vs plgg-fl predict on ``src`` at one mirroring setting, then plgg-fl's unoptimised engine path
    (whole volume, fp32, one window per forward) as the mask reference. Seconds are per volume, file to file."""
    import nnunet_side

    tag = "mirror" if mirroring else "nomirror"
    opts = PredictOptions(tta=mirroring, precision=args.precision, sw_batch_size=args.sw_batch_size, progress=False,
                          crop={"auto": None, "on": True, "off": False}[args.crop], overwrite=True, device="cpu")
    plain = PredictOptions(tta=mirroring, precision="fp32", sw_batch_size=1, crop=False, hot_box=False, progress=False,
                           overwrite=True, device="cpu")  # the engine's own path, as its evaluator runs it
    nn = timed(lambda: nnunet_side.predict_file(predictor, src, work / f"out_nnunet_{tag}", args.nnunet_api, log), args.repeats)
    pl = timed(lambda: plgg_file(ckpt, src, work / f"out_plgg_{tag}", opts), args.repeats)
    ref = timed(lambda: plgg_file(ckpt, src, work / f"out_plgg_plain_{tag}", plain), 1)
    m_nn, m_pl, m_ref = nn.pop("mask"), pl.pop("mask"), ref.pop("mask")
    brain = np.asarray(nib.load(str(src)).dataobj) > 0
    return {
        "mirroring": mirroring, "nnunet": nn, "plgg": pl, "plgg_plain": ref,
        "ratio": nn["s"] / pl["s"], "ratio_cpu": nn["cpu_s"] / pl["cpu_s"],
        "dice_plgg_vs_plain": dice(m_pl, m_ref), "dice_nnunet_vs_plgg": dice(m_nn, m_pl),
        # plgg-fl predict sets the mask to 0 outside the brain; nnU-Net labels all of its non-zero bounding box
        "dice_nnunet_vs_plgg_in_brain": dice(m_nn & brain, m_pl), "dice_nnunet_vs_plain_in_brain": dice(m_nn & brain, m_ref),
        "nnunet_voxels_outside_brain": int((m_nn.astype(bool) & ~brain).sum()),
        "dice_vs_blob_tumour": {"nnunet": dice(m_nn, truth), "plgg": dice(m_pl, truth), "plgg_plain": dice(m_ref, truth)},
        "foreground_voxels": {"nnunet": int(m_nn.sum()), "plgg": int(m_pl.sum()), "plgg_plain": int(m_ref.sum())},
    }


def print_comparison(r: dict, threads: int, weights: str) -> None:
    """One mirroring setting's result, a few lines (the JSON holds the same and more)."""
    nn, pl, ref, truth = r["nnunet"], r["plgg"], r["plgg_plain"], r["dice_vs_blob_tumour"]
    random = weights == "random"

    def row(name: str, t: dict) -> str:
        return (f"    {name:8} {t['s']:7.1f} s (CPU {t['cpu_s']:7.1f} s) {t['forwards']:3d} forwards / {t['windows']:3d} windows, "
                f"torch threads {t['threads']} | load {t['load_before']:.1f} -> {t['load_after']:.1f}")

    lines = [
        f"  mirroring {'on (8 flips)' if r['mirroring'] else 'off'}, {threads} torch threads:", row("nnU-Net", nn), row("plgg-fl", pl),
        f"    engine's unoptimised path (whole volume, fp32, 1 window/forward) {ref['s']:.1f} s (CPU {ref['cpu_s']:.1f} s), "
        f"{ref['windows']} windows",
        f"    ratio nnU-Net / plgg-fl {r['ratio']:.2f}x (CPU time {r['ratio_cpu']:.2f}x) - target >= 2: "
        f"{'MET' if r['ratio'] >= 2 else 'NOT met'}; windows {'equal' if nn['windows'] == pl['windows'] else 'DIFFER'}",
        f"    Dice(plgg-fl predict, engine's unoptimised path) {r['dice_plgg_vs_plain']:.4f} - target >= 0.995: "
        f"{'MET' if r['dice_plgg_vs_plain'] >= 0.995 else 'NOT met'}"
        + (" (random weights: many logits near 0, so bf16 rounding flips voxels a trained model would not)" if random else ""),
        f"    Dice(nnU-Net, plgg-fl) {r['dice_nnunet_vs_plgg']:.4f}; inside the brain {r['dice_nnunet_vs_plgg_in_brain']:.4f} "
        f"(vs the unoptimised path {r['dice_nnunet_vs_plain_in_brain']:.4f}); nnU-Net voxels outside the brain "
        f"{r['nnunet_voxels_outside_brain']} (plgg-fl predict zeroes them)",
        f"    Dice vs the blob's tumour: nnU-Net {truth['nnunet']:.4f}, plgg-fl {truth['plgg']:.4f}, unoptimised "
        f"{truth['plgg_plain']:.4f}" + (" (random weights: meaningless)" if random else ""),
    ]
    print("\n".join(lines), flush=True)


def against_nnunet(args, work: Path) -> int:
    """``--against nnunet``: nnU-Net's nnUNetPredictor vs ``plgg-fl predict`` (module docstring of nnunet_side)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
    import nnunet_side

    from plgg_fl.engine.config import cpu_has_native_bf16

    if args.device != "cpu":
        raise SystemExit("--against nnunet compares on CPU only (--device cpu)")
    threads = torch.get_num_threads()
    env = nnunet_side.configure(threads, work)  # before nnunetv2 is imported
    log = work / "nnunet_stdout.log"
    shape = tuple(args.shape)
    src = work / f"t2_{'x'.join(map(str, shape))}_1mm.nii.gz"
    truth = make_volume(src, shape=shape)
    folder, ckpt, info = nnunet_models(work, args.nnunet_weights, args.train_steps)
    nn_settings = nnunet_side.effective_settings()
    weights_text = ("random weights (nnU-Net's init, seed 0)" if args.nnunet_weights == "random" else
                    f"plgg-fl's trainer's weights ({args.train_steps or TRAIN['nnunet_v2'][2]} steps on blobs, 64^3 "
                    "patches; round trip plgg-fl -> nnU-Net -> import exact)")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cpu_has_native_bf16())
    print(f"torch {torch.__version__}, {threads} torch threads (nnU-Net's cap nnUNet_def_n_proc = "
          f"{nn_settings['default_num_processes']}), nnunetv2 {nn_settings['nnunetv2']}, load average {os.getloadavg()[0]:.1f}\n"
          f"volume {shape} at 1 mm ({src.name}); nnU-Net reads/writes with {nnunet_side.READER} (RAS, axes reversed: the "
          f"voxels plgg-fl sees), API {args.nnunet_api}\nmodel: nnU-Net 3d_fullres PlainConvUNet, {weights_text} = plgg-fl "
          f"{info['preset']} ({info['parameters'] / 1e6:.1f} M parameters), patch "
          f"{info['patch']}, {info['spacing_mm']} mm, overlap {info['sw_overlap']} (nnU-Net tile step 0.5), Gaussian\n"
          f"precision: nnU-Net fp32 (no CPU autocast); plgg-fl --precision {args.precision} -> "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {args.sw_batch_size or info['sw_batch_size']} windows per forward, "
          f"brain-box crop {args.crop}" + "".join(f"\nimport warning: {w}" for w in info["import_warnings"]), flush=True)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.mirroring]
    results = {"shape": list(shape), "threads": threads, "env": env, "nnunet": nn_settings, "reader": nnunet_side.READER,
               "api": args.nnunet_api, "precision": args.precision, "plgg_bf16": bf16, "model": info, "runs": {}}
    for mirroring in settings:
        predictor = nnunet_side.make_predictor(folder, mirroring, log)
        if not results["runs"]:
            warm_up(predictor, ckpt, bf16)
        r = compare_nnunet(mirroring, predictor, ckpt, src, truth, work, args, log)
        print_comparison(r, threads, args.nnunet_weights)
        results["runs"]["mirroring_on" if mirroring else "mirroring_off"] = r
    out = work / "bench_predict_nnunet.json"
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"results -> {out} (nnU-Net's console output -> {log})")
    return 0


def main(argv=None) -> int:
    from plgg_fl.engine.config import cpu_has_native_bf16

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=None, choices=sorted(TRAIN),
                    help="briefly trained blob models (default: small nnunet, or none with --checkpoint)")
    ap.add_argument("--train-steps", type=int, help="training steps of the blob models (default: per preset, a few dozen)")
    ap.add_argument("--full-fov", action="store_true", help="train the blob models on whole volumes (crop_to_brain off)")
    ap.add_argument("--crop", choices=("auto", "on", "off"), default="auto",
                    help="predict's brain-box crop: auto = the model's crop_to_brain (plgg-fl predict's default)")
    ap.add_argument("--checkpoint", help="a trained engine checkpoint, benchmarked on held-out cohort cases")
    ap.add_argument("--cases", type=int, default=0, help="with --checkpoint: held-out test cases (default 0: all of them)")
    ap.add_argument("--cohort", default="runs/cohorts/demo", help="with --checkpoint: the synthetic cohort (default: the demo's)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per path (median reported)")
    ap.add_argument("--work", default="/tmp/plgg_bench", help="scratch folder (cached checkpoints, outputs)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--sw-batch-size", type=int, help="windows per forward for predict (default: the model's, as plgg-fl predict)")
    ap.add_argument("--device", default="cpu", help="cpu (the target) or cuda (predict then uses the model's fp16 AMP)")
    ap.add_argument("--attribute", action="store_true", help="also time predict at fp32 / 1 window per forward")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a busy shared CPU)")
    ap.add_argument("--against", choices=("monai", "nnunet"), default="monai",
                    help="baseline: the naive MONAI path (default), or nnU-Net v2's nnUNetPredictor (needs the bench extra)")
    ap.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), metavar=("X", "Y", "Z"),
                    help="the blob volume's grid in 1 mm voxels (default 240 240 155; smaller for a smoke run)")
    ap.add_argument("--mirroring", choices=("off", "on", "both"), default="both",
                    help="with --against nnunet: test-time mirroring (8 flips) in both tools off, on, or both in turn")
    ap.add_argument("--nnunet-weights", choices=("trained", "random"), default="trained",
                    help="with --against nnunet: the shared model's weights - briefly trained on blobs (default; the masks "
                         "mean something) or nnU-Net's random init (logits near 0: masks are noise)")
    ap.add_argument("--nnunet-api", choices=("sequential", "files"), default="sequential",
                    help="with --against nnunet: predict_from_files_sequential (in-process, default) or predict_from_files "
                         "(nnU-Net's default: spawned preprocessing and export workers, one each)")
    args = ap.parse_args(argv)
    presets = args.presets if args.presets is not None else ([] if args.checkpoint else ["small", "nnunet"])
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.against == "nnunet":
        return against_nnunet(args, work)
    if args.device != "cpu":
        print(f"device {torch.cuda.get_device_name()}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
          f"load average {os.getloadavg()[0]:.1f}; volumes {tuple(args.shape)} at 1 mm", flush=True)
    opts = PredictOptions(overwrite=True, progress=False, precision=args.precision, sw_batch_size=args.sw_batch_size,
                          crop={"auto": None, "on": True, "off": False}[args.crop])
    runs = []  # (label, model, cfg, [(case name, path, truth)])
    if presets:
        src = work / f"t2_{'x'.join(map(str, args.shape))}_1mm.nii.gz"
        truth = make_volume(src, shape=tuple(args.shape))
        runs += [(p, *get_model(p, work, args.device, args.train_steps, args.full_fov), [("blob", src, truth)]) for p in presets]
    if args.checkpoint:
        cases = cohort_volumes(work, args.cases, Path(args.cohort))
        runs.append((Path(args.checkpoint).stem, *checkpoint_model(Path(args.checkpoint), args.device), cases))
    results = {}
    for label, model, cfg, cases in runs:
        fast_cfg = inference_config(cfg, opts)
        out = work / f"out_{label}"
        out.mkdir(exist_ok=True)
        with torch.inference_mode():  # warm-up: oneDNN picks kernels on first use, for each precision
            x = torch.zeros(fast_cfg.sw_batch_size, 1, *cfg.patch_size, device=args.device)
            model(x[:1])
            fmt = inference_memory_format(torch.device(args.device), fast_cfg)  # the layout predict runs the network in
            with model_memory_format(model, fmt), torch.autocast(
                    "cpu", dtype=torch.bfloat16, enabled=fast_cfg.use_cpu_bf16() and args.device == "cpu"):
                model(x.contiguous(memory_format=fmt))
        per_case = {}
        for name, src, truth in cases:
            r = time_case(model, cfg, fast_cfg, opts, src, out, truth, args.repeats, args.attribute)
            per_case[name] = r
            print(f"  {label} {name}: naive {r['naive_s']:.1f} s, predict {r['predict_s']:.1f} s | Dice vs reference "
                  f"naive {r['dice_naive_vs_truth']:.4f}, predict {r['dice_predict_vs_truth']:.4f} | "
                  f"Dice(predict, naive) {r['dice_predict_vs_naive']:.4f} | naive voxels outside the brain "
                  f"{r['naive_voxels_outside_brain']}", flush=True)
        tot = {k: sum(r[k] for r in per_case.values()) for k in ("naive_s", "predict_s", "naive_cpu_s", "predict_cpu_s")}
        keys = ["dice_naive_vs_truth", "dice_predict_vs_truth", "dice_predict_vs_naive"]
        keys += ["dice_engine_plain_vs_truth", "dice_predict_vs_engine_plain"] if args.attribute else []
        mean = {k: float(np.mean([r[k] for r in per_case.values()])) for k in keys}
        r = {
            "cases": len(per_case), "naive_s_per_volume": tot["naive_s"] / len(per_case),
            "predict_s_per_volume": tot["predict_s"] / len(per_case),
            "speedup": tot["naive_s"] / tot["predict_s"], "speedup_cpu_time": tot["naive_cpu_s"] / tot["predict_cpu_s"],
            "mean_dice_naive_vs_truth": mean["dice_naive_vs_truth"], "mean_dice_predict_vs_truth": mean["dice_predict_vs_truth"],
            "mean_dice_predict_vs_naive": mean["dice_predict_vs_naive"],
            **{f"mean_{k}": mean[k] for k in keys[3:]},
            "dice_delta_vs_truth": abs(mean["dice_predict_vs_truth"] - mean["dice_naive_vs_truth"]),
            "max_case_dice_delta_vs_truth": max(abs(c["dice_predict_vs_truth"] - c["dice_naive_vs_truth"]) for c in per_case.values()),
            "window": list(cfg.patch_size), "spacing_mm": list(cfg.spacing_mm), "overlap": cfg.sw_overlap,
            "predict_settings": {"bf16": fast_cfg.use_cpu_bf16() and args.device == "cpu", "sw_batch_size": fast_cfg.sw_batch_size,
                                 "crop_to_brain_box": cfg.crop_to_brain if opts.crop is None else opts.crop},
            "load_average_after": os.getloadavg()[0], "per_case": per_case,
        }
        results[label] = r
        ok = r["speedup"] >= 4 and r["dice_delta_vs_truth"] <= 0.005
        print(
            f"{label:>8}: {r['cases']} volume(s) | naive MONAI {r['naive_s_per_volume']:6.1f} s/volume | plgg-fl predict "
            f"{r['predict_s_per_volume']:5.1f} s/volume | {r['speedup']:.2f}x (CPU time {r['speedup_cpu_time']:.2f}x) | "
            f"mean Dice vs reference {r['mean_dice_naive_vs_truth']:.4f} -> {r['mean_dice_predict_vs_truth']:.4f} "
            f"(|delta| {r['dice_delta_vs_truth']:.4f}, worst case {r['max_case_dice_delta_vs_truth']:.4f}) | "
            f"mean Dice(predict, naive) {r['mean_dice_predict_vs_naive']:.4f} | "
            f"target (>= 4x, |delta| <= 0.005) {'MET' if ok else 'NOT met'} | load {r['load_average_after']:.1f}",
            flush=True,
        )
        if args.attribute:
            print(f"{'':>8}  the engine's own path (its evaluator: whole volume resampled, then cropped to the brain; fp32, "
                  f"1 window per forward): mean Dice vs reference {r['mean_dice_engine_plain_vs_truth']:.4f}, "
                  f"|delta| to predict {abs(r['mean_dice_engine_plain_vs_truth'] - r['mean_dice_predict_vs_truth']):.4f}; "
                  f"mean Dice(predict, engine) {r['mean_dice_predict_vs_engine_plain']:.4f}", flush=True)
    (work / "bench_predict.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"results -> {work / 'bench_predict.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
