"""nnU-Net v2's side of ``bench_predict.py --against nnunet``: the model and nnU-Net's own predictor.

One standard BraTS-like 3d_fullres ``PlainConvUNet`` (6 levels of 32..320 filters, 128^3 patch, 1 mm; 1
input channel "T2", 2 labels background/tumour; about 31 M parameters), built by nnU-Net's
``get_network_from_plans`` and written as nnU-Net's trainer writes a results folder. Its weights: nnU-Net's
own random initialisation (seeded), or ``trained`` ones - the same network as plgg-fl's ``nnunet_v2``
preset, trained briefly on bright-blob volumes by plgg-fl's trainer, written into nnU-Net's network by the
exact inverse of ``plgg-fl import-nnunet``'s map (:func:`load_plgg_weights`). Files are read and written by ``NibabelIOWithReorient``
(plans' ``image_reader_writer`` and dataset.json's ``overwrite_image_reader_writer``): the image reoriented
to RAS and its axes reversed, the same voxels plgg-fl's RAS reorientation gives - the reader
``plgg-fl import-nnunet`` maps exactly (docs/ENGINE.md "Stage 1 from nnU-Net").

Needs nnunetv2 (the ``bench`` extra); :func:`configure` must run before anything imports it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from plgg_fl.engine.nnunet_plans import BINARY, T2_ONLY, brats_architecture, dataset_for, plans_for, write_results_folder

READER = "NibabelIOWithReorient"
PATCH, SPACING = (128, 128, 128), (1.0, 1.0, 1.0)


def configure(threads: int, work: Path) -> dict:
    """Environment nnU-Net reads once, when first imported: its thread cap ``nnUNet_def_n_proc`` (default
    8; the predictor sets torch to min(this, torch's threads) and its export to this) = ``threads``;
    ``nnUNet_compile`` off (plgg-fl does not compile either); its data folders inside ``work`` (unused;
    set so nnU-Net does not warn). Returns what was set."""
    env = {"nnUNet_def_n_proc": str(threads), "nnUNet_compile": "false"}
    env.update({k: str(work / "nnunet_env" / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    os.environ.update(env)
    return env


def effective_settings() -> dict:
    """What the imported nnU-Net actually uses (read back from its modules), and its version."""
    from importlib.metadata import version

    import nnunetv2.inference.predict_from_raw_data as pfr

    return {"nnunetv2": version("nnunetv2"), "default_num_processes": pfr.default_num_processes}


def write_model(root: Path, plgg_state: dict | None = None, seed: int = 0) -> Path:
    """The nnU-Net results folder under ``root``, written once and reused; returns the trainer folder. Weights:
    nnU-Net's random initialisation (``seed``), or ``plgg_state`` (a ``nnunet_v2`` PlggUNet state dict)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    folder = root / "Dataset999_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    plans = plans_for(brats_architecture(), list(PATCH), list(SPACING), 1, reader=READER)
    ds = dataset_for(T2_ONLY, BINARY, reader=READER)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 2, allow_init=True, deep_supervision=True)
    if plgg_state is not None:
        load_plgg_weights(net, plgg_state)
    return write_results_folder(net, plans, ds, root)


def load_plgg_weights(net: torch.nn.Module, state: dict) -> None:
    """Write a ``nnunet_v2`` PlggUNet's ``state`` into nnU-Net's PlainConvUNet ``net`` (in place): the inverse
    of ``import_nnunet``'s map for these plans (reader RAS, transpose_forward identity, so nnU-Net's axes are
    plgg-fl's reversed: kernels permuted (2, 1, 0), which is its own inverse). The convolution biases, which
    the instance norm after each convolution cancels and PlggUNet does not have, are set to 0."""
    n = len(net.encoder.stages)
    target = net.state_dict()  # shares storage with the parameters (nnU-Net's aliases included)

    def put(key: str, value: torch.Tensor, spatial: bool = False) -> None:
        target[key].copy_(value.permute(0, 1, 4, 3, 2) if spatial else value)

    def block(nn_prefix: str, plgg_prefix: str) -> None:
        for j in (0, 1):
            put(f"{nn_prefix}.convs.{j}.conv.weight", state[f"{plgg_prefix}.conv{j + 1}.conv.weight"], spatial=True)
            target[f"{nn_prefix}.convs.{j}.conv.bias"].zero_()
            put(f"{nn_prefix}.convs.{j}.norm.weight", state[f"{plgg_prefix}.norm{j + 1}.weight"])
            put(f"{nn_prefix}.convs.{j}.norm.bias", state[f"{plgg_prefix}.norm{j + 1}.bias"])

    with torch.no_grad():
        for s in range(n):
            block(f"encoder.stages.{s}.0", "input_block" if s == 0 else "bottleneck" if s == n - 1 else f"downsamples.{s - 1}")
        for d in range(n - 1):  # decoder levels, deepest first in both networks
            put(f"decoder.transpconvs.{d}.weight", state[f"upsamples.{d}.transp_conv.conv.weight"], spatial=True)
            put(f"decoder.transpconvs.{d}.bias", state[f"upsamples.{d}.transp_conv.conv.bias"])
            block(f"decoder.stages.{d}", f"upsamples.{d}.conv_block")
            level = n - 2 - d  # 0 = full resolution
            head = "output_block" if level == 0 else f"deep_supervision_heads.{level - 1}"
            put(f"decoder.seg_layers.{d}.weight", state[f"{head}.conv.conv.weight"], spatial=True)
            put(f"decoder.seg_layers.{d}.bias", state[f"{head}.conv.conv.bias"])


def make_predictor(folder: Path, mirroring: bool, log: Path):
    """nnU-Net's ``nnUNetPredictor`` on CPU for fold 0: tile step 0.5 (50 % overlap), Gaussian weighting,
    test-time mirroring over the checkpoint's axes (0, 1, 2: 8 forward passes per window) iff ``mirroring``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with quiet(log):
        p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                            perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                            verbose_preprocessing=False, allow_tqdm=False)
        p.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return p


def predict_file(predictor, src: Path, out_dir: Path, api: str, log: Path) -> np.ndarray:
    """nnU-Net file in, file out: read ``src``, preprocess (crop to non-zero, z-score, resample), sliding
    window, export (resample back, argmax, un-crop, write ``out_dir/nnunet.nii.gz``). ``api``:
    "sequential" = ``predict_from_files_sequential`` (all in this process), "files" = ``predict_from_files``
    (nnU-Net's default: one spawned preprocessing process, one spawned export process). Returns the mask
    (uint8, the input's shape)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trunc = str(out_dir / "nnunet")
    with quiet(log):
        if api == "sequential":
            predictor.predict_from_files_sequential([[str(src)]], [trunc], save_probabilities=False, overwrite=True)
        elif api == "files":
            predictor.predict_from_files([[str(src)]], [trunc], save_probabilities=False, overwrite=True,
                                         num_processes_preprocessing=1, num_processes_segmentation_export=1)
        else:
            raise ValueError(f"api must be sequential or files, got {api!r}")
    return np.asarray(nib.load(trunc + ".nii.gz").dataobj).astype(np.uint8)


@contextlib.contextmanager
def quiet(log: Path):
    """nnU-Net prints progress to stdout: appended to ``log`` instead."""
    with open(log, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        yield
