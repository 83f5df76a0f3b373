"""``plgg-fl export --format monai-bundle``: a MONAI bundle that MONAI's own runner executes.

Layout of the bundle folder::

    configs/metadata.json    MONAI bundle metadata (versions, network_data_format, intended use, data source)
    configs/logging.conf     console logging for MONAI's runner
    configs/inference.json   the inference workflow (MONAI transforms, DynUNet, SlidingWindowInferer,
                             SupervisedEvaluator) - nothing from plgg-fl is imported
    models/model.pt          state dict of MONAI's DynUNet (the network PlggUNet subclasses)
    docs/README.md           the model card

Run it with MONAI (needs ``fire`` and ``pytorch-ignite``, as every MONAI bundle runner does)::

    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
        --dataset_dir SCANS --output_dir OUT

The workflow is the engine's inference path written in MONAI's config syntax: load, reorient to the
model's orientation, resample to its spacing (mm, bilinear), crop to the non-zero (brain) region,
z-score over non-zero voxels, Gaussian-weighted sliding windows, softmax, invert the chain (bilinear),
argmax, optional largest component, zero outside the brain (non-zero input voxels), save on the
input's grid. ``plgg-fl predict --no-crop --precision fp32`` runs the same steps; its default brain-box
crop and bf16 move a few boundary voxels (docs/inference.md gives the measured agreement).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DynUNet

from plgg_fl.engine.networks import dynunet_kwargs
from plgg_fl.predict.export import ModelError, package_versions
from plgg_fl.predict.io import SetupError, atomic_write

FORMAT = "monai-bundle"
CONFIG, METADATA, WEIGHTS, README = "configs/inference.json", "configs/metadata.json", "models/model.pt", "docs/README.md"
LOGGING = "configs/logging.conf"
#: MONAI's runner reads this next to the config (Python logging fileConfig: INFO to the console).
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
INTENDED_USE = (
    "Research use only; not a medical device. Whole-tumour segmentation of pediatric low-grade glioma on "
    "skull-stripped T2-weighted brain MRI (zero outside the brain), for volumetry and review by a radiologist."
)


def dynunet_from(model: torch.nn.Module) -> tuple[DynUNet, dict[str, Any]]:
    """MONAI's DynUNet holding ``model``'s weights (eval mode) and the plain arguments that build it.

    PlggUNet is a DynUNet without the ``skip_layers`` aliases; DynUNet's state dict holds the same
    tensors a second time under ``skip_layers.*``. Raises ValueError if any other key differs, or if the
    two networks' eval outputs differ on a test input (they must be the same computation).
    """
    kwargs = dynunet_kwargs(model.arch)
    net = DynUNet(**kwargs).eval()
    result = net.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("skip_layers.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"PlggUNet weights do not fit MONAI's DynUNet: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    x = torch.randn(1, int(kwargs["in_channels"]), *([2 * model.divisor] * 3), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        diff = float((net(x) - model(x)).abs().max())
    model.train(was_training)
    if diff > 1e-5:
        raise ValueError(f"MONAI's DynUNet does not reproduce the PlggUNet (max logit difference {diff:g})")
    return net, kwargs


def _target(name: str, **kw: Any) -> dict[str, Any]:
    return {"_target_": name, **kw}


def inference_config(cfg: Any, net_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``configs/inference.json`` workflow for a model with TrainConfig ``cfg`` (see module docstring)."""
    pre: list[dict[str, Any]] = [
        _target("LoadImaged", keys="image", reader="NibabelReader", ensure_channel_first=True, image_only=True),
        _target("EnsureTyped", keys="image", dtype="$torch.float32", track_meta=True),
        _target("CopyItemsd", keys="image", times=1, names="brain"),  # the input as read: its non-zero voxels are the brain
        _target("Orientationd", keys="image", axcodes=cfg.orientation, labels=None),
    ]
    if cfg.spacing_mm:
        pre.append(_target("Spacingd", keys="image", pixdim=list(cfg.spacing_mm), mode="bilinear"))
    if cfg.crop_to_brain:
        pre.append(_target("CropForegroundd", keys="image", source_key="image", allow_smaller=True))
    pre.append(_target("NormalizeIntensityd", keys="image", nonzero=True, channel_wise=True))
    post: list[dict[str, Any]] = [
        _target("Activationsd", keys="pred", softmax=True),
        _target("Invertd", keys="pred", transform="@preprocessing", orig_keys="image", nearest_interp=False, to_tensor=True),
        _target("AsDiscreted", keys="pred", argmax=True),
    ]
    if cfg.keep_largest:
        post.append(_target("KeepLargestConnectedComponentd", keys="pred", applied_labels=[1]))
    post += [
        _target("MaskIntensityd", keys="pred", mask_key="brain", select_fn="$lambda x: x != 0"),
        _target("SaveImaged", keys="pred", output_dir="@output_dir", output_postfix="mask", output_dtype="$numpy.uint8",
                resample=False, separate_folder=False, print_log=False),
    ]
    return {
        "imports": ["$import glob", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii.gz') + glob.glob(@dataset_dir + '/*.nii'))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": _target("DynUNet", **net_kwargs),
        "network": "$@network_def.to(@device)",
        "preprocessing": _target("Compose", transforms=pre),
        "dataset": _target("Dataset", data="$[{'image': f} for f in @datalist]", transform="@preprocessing"),
        "dataloader": _target("DataLoader", dataset="@dataset", batch_size=1, shuffle=False, num_workers=0),
        "inferer": _target("SlidingWindowInferer", roi_size=list(cfg.patch_size), sw_batch_size=int(cfg.sw_batch_size),
                           overlap=float(cfg.sw_overlap), mode="gaussian"),
        "postprocessing": _target("Compose", transforms=post),
        "handlers": [
            _target("CheckpointLoader", load_path=f"$@bundle_root + '/{WEIGHTS}'", load_dict={"model": "@network"}, strict=True),
            _target("StatsHandler", iteration_log=False),
        ],
        "evaluator": _target("SupervisedEvaluator", device="@device", val_data_loader="@dataloader", network="@network",
                             inferer="@inferer", postprocessing="@postprocessing", val_handlers="@handlers",
                             amp=f"$torch.cuda.is_available() and {bool(cfg.amp)}"),
        "run": ["$@evaluator.run()"],
    }


def training_data(meta: dict[str, Any]) -> str:
    """What the model was trained on, from its checkpoint's provenance (``meta["training_data"]``)."""
    data = meta.get("training_data")
    if not data:
        return "not recorded in the checkpoint"
    return "; ".join(f"{site}: {what}" for site, what in data.items()) if isinstance(data, dict) else str(data)


def metadata(model: torch.nn.Module, cfg: Any, meta: dict[str, Any], source_name: str) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle metadata fields, filled from the checkpoint."""
    versions = package_versions(extra=("pytorch-ignite", "fire"))
    spacing = "its own grid" if not cfg.spacing_mm else " x ".join(f"{s:g}" for s in cfg.spacing_mm) + " mm"
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by plgg-fl {versions['plgg-fl']} from {source_name}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"].split("+")[0],
        "numpy_version": versions["numpy"],
        "required_packages_version": {k: versions[k] for k in ("nibabel", "pytorch-ignite", "fire")},
        "name": f"plgg-fl whole-tumour segmentation ({meta.get('method', model.preset)})",
        "task": "Pediatric low-grade glioma whole-tumour segmentation on T2-weighted MRI",
        "description": ("3D U-Net (MONAI DynUNet, plgg-fl preset "
                        f"'{model.preset}') trained by plgg-fl: stepwise transfer learning (adult glioma pretraining, then "
                        "federated fine-tuning on pediatric sites, then decoder-only fine-tuning; Boyd et al., Radiology: AI 2024)."),
        "authors": "plgg-fl",
        "copyright": "plgg-fl contributors; Apache-2.0",
        "intended_use": INTENDED_USE,
        "data_source": training_data(meta),
        "data_type": "nibabel",
        "image_classes": f"single-channel T2-weighted MRI, skull-stripped, reoriented to {cfg.orientation}, resampled to "
                         f"{spacing}, z-scored over non-zero voxels",
        "label_classes": "0 background, 1 whole tumour",
        "pred_classes": "0 background, 1 whole tumour",
        "eval_metrics": meta.get("test_metrics", {}),
        "references": ["Boyd A, et al. Stepwise transfer learning for expert-level pediatric brain tumor MRI segmentation "
                       "in a limited data scenario. Radiology: Artificial Intelligence 2024."],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": list(cfg.patch_size), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": {"0": "T2"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": list(cfg.patch_size), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": {"0": "background", "1": "whole tumour"}}},
        },
        "plgg_fl": {"preset": model.preset, "model_args": dict(model.init_args), "train_config": cfg.to_dict(),
                    "checkpoint_meta": {k: v for k, v in meta.items() if k != "preprocessing"}},
    }


def readme(meta_doc: dict[str, Any], cfg: Any) -> str:
    """``docs/README.md``: the model card in prose."""
    lines = [
        f"# {meta_doc['name']}", "", meta_doc["description"], "",
        "## Intended use", "", INTENDED_USE, "",
        "## Input", "", f"- {meta_doc['image_classes']}.",
        "- The scan must be skull-stripped: the non-zero voxels are taken as the brain and the mask is zero outside them.",
        "", "## Training data", "", f"- {meta_doc['data_source']}", "",
        "## Run with MONAI", "", "```bash",
        "pip install 'monai[fire,ignite]' nibabel",
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir SCANS --output_dir OUT",
        "```", "", "Writes `OUT/<scan>_mask.nii.gz` (uint8, 1 = whole tumour) on each input's own grid.", "",
        "## Inference settings", "",
        f"- sliding window {list(cfg.patch_size)} voxels, overlap {cfg.sw_overlap}, Gaussian weighting; "
        f"largest component only: {bool(cfg.keep_largest)}",
        f"- test metrics recorded with the model: {json.dumps(meta_doc['eval_metrics']) if meta_doc['eval_metrics'] else 'none'}",
        "", "Exported by plgg-fl; the same model runs with `plgg-fl predict`.", "",
    ]
    return "\n".join(lines)


def export_bundle(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the MONAI bundle of engine checkpoint ``ckpt`` into folder ``out`` (see module docstring)."""
    from plgg_fl.engine.checkpoint import load_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise ModelError("checkpoint not found", ckpt)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SetupError("bundle folder exists and is not empty; pass --overwrite to replace it", out)
        for name in ("configs", "models", "docs"):
            shutil.rmtree(out / name, ignore_errors=True)
    try:
        model, cfg, meta = load_checkpoint(ckpt, device="cpu")
    except Exception:  # noqa: BLE001 - what failed is reported as what the file is
        raise ModelError("not a plgg-fl engine checkpoint; a MONAI bundle is made from one (.pt saved by plgg-fl)", ckpt) from None
    net, kwargs = dynunet_from(model)
    meta_doc = metadata(model, cfg, meta, ckpt.name)
    atomic_write(out / WEIGHTS, lambda p: torch.save(net.state_dict(), p), overwrite=True)
    for rel, doc in ((CONFIG, inference_config(cfg, kwargs)), (METADATA, meta_doc)):
        text = json.dumps(doc, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        atomic_write(out / rel, lambda p, t=text: p.write_text(t + "\n", encoding="utf-8"), overwrite=True)
    atomic_write(out / LOGGING, lambda p: p.write_text(LOGGING_CONF, encoding="utf-8"), overwrite=True)
    atomic_write(out / README, lambda p: p.write_text(readme(meta_doc, cfg), encoding="utf-8"), overwrite=True)
    return out
