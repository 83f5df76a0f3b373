"""nnU-Net v2 plans, ``dataset.json`` and results folders written without nnU-Net installed.

What the nnU-Net import's tests and ``benchmarks/bench_predict.py --against nnunet`` build nnU-Net's own
networks from (with nnU-Net's ``get_network_from_plans``) and hand to ``plgg-fl import-nnunet`` or to
nnU-Net's ``nnUNetPredictor``. Plain JSON and ``torch.save``: this module imports no nnU-Net, so plgg-fl
never needs it at run time. The layouts are those nnU-Net 2.8 writes (planner, trainer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["T2_ONLY", "BINARY", "architecture", "brats_architecture", "plans_for", "dataset_for", "write_results_folder"]

T2_ONLY = {"0": "T2"}
BINARY = {"background": 0, "tumour": 1}
DATASET = "Dataset999_Toy"


def architecture(filters, kernels, strides, conv_bias=True, cls="PlainConvUNet", norm="InstanceNorm3d", **extra) -> dict:
    """``configurations.<c>.architecture`` as nnU-Net 2.8's planner writes it: ``filters`` per level,
    ``kernels`` / ``strides`` per level and axis (nnU-Net's axis order)."""
    n = len(filters)
    kw = {
        "n_stages": n, "features_per_stage": list(filters), "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": conv_bias,
        "norm_op": f"torch.nn.modules.{'batchnorm' if 'Batch' in norm else 'instancenorm'}.{norm}",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if cls == "ResidualEncoderUNet":
        kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    kw.update(extra)
    module = "unet" if cls in ("PlainConvUNet", "ResidualEncoderUNet") else "residual_unet"
    return {"network_class_name": f"dynamic_network_architectures.architectures.{module}.{cls}", "arch_kwargs": kw,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def brats_architecture() -> dict:
    """The standard 3d_fullres network nnU-Net 2.8's planner makes for BraTS at 1 mm (cropped median about
    140 x 171 x 137 voxels): 6 levels of 32..320 filters, 3^3 kernels, stride 2 below the first level, for
    128^3 patches - what plgg-fl imports as the ``nnunet_v2`` preset (about 31 M parameters)."""
    return architecture([32, 64, 128, 256, 320, 320], [[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5)


def plans_for(arch: dict, patch, spacing, n_channels: int, transpose_forward=(0, 1, 2), use_mask=True,
              reader="SimpleITKIO") -> dict:
    """An nnU-Net v2 ``plans.json`` with one configuration, 3d_fullres: ``patch`` in voxels and ``spacing``
    in mm, both in nnU-Net's axis order; z-score normalisation per channel over the non-zero mask
    (``use_mask``); ``reader`` the image reader-writer nnU-Net's predictor reads and writes files with."""
    tb = [int(np.argwhere(np.array(transpose_forward) == i)[0][0]) for i in range(3)]
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(patch),
        "image_reader_writer": reader, "transpose_forward": list(transpose_forward), "transpose_backward": tb,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": list(spacing),
            "normalization_schemes": ["ZScoreNormalization"] * n_channels, "use_mask_for_norm": [use_mask] * n_channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": arch, "batch_dice": False,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0,
                                                                 "percentile_00_5": 0.0, "percentile_99_5": 1.0,
                                                                 "std": 0.2} for c in range(n_channels)},
    }


def dataset_for(channels: dict, labels: dict, reader: str | None = None) -> dict:
    """An nnU-Net v2 ``dataset.json``: region-based (``regions_class_order``) if any label is a list;
    ``reader`` sets ``overwrite_image_reader_writer``."""
    ds: dict[str, Any] = {"channel_names": channels, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    if any(isinstance(v, list) for v in labels.values()):
        ds["regions_class_order"] = list(range(1, len(labels)))
    if reader:
        ds["overwrite_image_reader_writer"] = reader
    return ds


def write_results_folder(net: torch.nn.Module, plans: dict, ds: dict, root: Path, fold: int = 0,
                         extra: dict | None = None) -> Path:
    """The results folder nnU-Net's trainer writes: ``root/<dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres/
    {plans.json, dataset.json, fold_N/checkpoint_final.pth}``; returns the trainer folder. The checkpoint has
    the keys and value types of ``nnUNetTrainer.save_checkpoint`` (nnunetv2 2.8): the network's state dict
    (aliases included), optimizer state, init_args with plans, dataset.json and a torch.device, mirroring
    axes (0, 1, 2) for test-time mirroring; ``extra`` replaces or adds keys (logging, epoch, ...)."""
    folder = Path(root) / plans.get("dataset_name", DATASET) / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(ds, indent=2), encoding="utf-8")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    ck = {"network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
          "logging": {}, "_best_ema": None, "current_epoch": 0,
          "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": ds,
                        "device": torch.device("cpu")},
          "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2), **(extra or {})}
    torch.save(ck, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
