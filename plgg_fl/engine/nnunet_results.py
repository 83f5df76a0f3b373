"""Reading an nnU-Net v2 results folder: the trainer folder, a fold's checkpoint and the plans.

``find_checkpoint`` finds ``<trainer>__<plans>__<configuration>/fold_N/checkpoint_*.pth`` from a trainer
folder, a dataset folder or a checkpoint file; ``read_nnunet_checkpoint`` reads it with
``torch.load(weights_only=True)`` (numpy's scalar and dtype types allowed; ``trust`` only unpickles
fully); ``configuration_plan`` gives one configuration's plan (old-format plans converted). No nnU-Net
is imported. :mod:`plgg_fl.engine.nnunet_import` maps what is read here onto a PlggUNet.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("plgg_fl.engine")

#: ``checkpoint=`` names -> nnU-Net's file names in ``fold_N/``
CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


class NnUNetImportError(ValueError):
    """An nnU-Net model that cannot be imported (or read); the message names the part and why."""


def find_checkpoint(path: str | Path, fold: str | int = 0, checkpoint: str = "final", configuration: str | None = None,
                    trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans") -> tuple[Path, Path]:
    """``(trainer folder, checkpoint file)`` for ``path``: a trainer folder, the dataset folder holding
    ``<trainer>__<plans>__<configuration>/`` (default configuration 3d_fullres) or a checkpoint file."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent, path
    if not path.is_dir():
        raise NnUNetImportError(f"{path}: not found")
    if not ((path / "plans.json").is_file() or any(path.glob("fold_*"))):
        name = f"{trainer}__{plans}__{configuration or '3d_fullres'}"
        if not (path / name).is_dir():
            found = sorted(p.name for p in path.glob("*__*__*") if p.is_dir())
            if found:
                raise NnUNetImportError(f"{path}: no {name}/ here, only {', '.join(found)}: give that folder, or "
                                        "--trainer / --plans / --configuration")
            datasets = sorted(p.name for p in path.glob("Dataset*") if p.is_dir())
            if datasets:
                raise NnUNetImportError(f"{path}: an nnU-Net results root; give one dataset's trainer folder "
                                        f"(datasets here: {', '.join(datasets[:6])}{', ...' if len(datasets) > 6 else ''})")
            raise NnUNetImportError(f"{path}: not an nnU-Net v2 results folder (no plans.json, fold_N/ or "
                                    "<trainer>__<plans>__<configuration>/)")
        path = path / name
    if checkpoint not in CHECKPOINT_FILES:
        raise NnUNetImportError(f"checkpoint must be one of {', '.join(CHECKPOINT_FILES)}, got {checkpoint!r}")
    fold_dir = path / f"fold_{fold}"
    ckpt = fold_dir / CHECKPOINT_FILES[checkpoint]
    if not ckpt.is_file():
        folds = sorted(p.name for p in path.glob("fold_*") if p.is_dir())
        have = sorted(p.name for p in fold_dir.glob("*.pth")) if fold_dir.is_dir() else []
        raise NnUNetImportError(f"{ckpt}: not found (folds here: {', '.join(folds) or 'none'}"
                                + (f"; {fold_dir.name} holds {', '.join(have)}" if have else "") + ")")
    return path, ckpt


def _numpy_scalar_globals() -> list:
    """The numpy globals an nnU-Net checkpoint's logging needs (numpy float scalars: a dtype and bytes), under
    the module names numpy 1 and 2 pickle them with. Data only; nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    numeric = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                           "float16", "float32", "float64")]  # numpy.dtypes.Float64DType, ... (numpy >= 1.25)
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *(t for t in numeric if t is not np.dtype)]


def read_nnunet_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """An nnU-Net v2 checkpoint (``network_weights``, ``init_args``, ``trainer_name``, ...), read with
    ``torch.load(weights_only=True)`` and numpy's scalar type allowed. ``trust`` unpickles it fully
    (``weights_only=False``, which can run code the file carries) - only ever when asked for."""
    path = Path(path)
    if trust:
        log.warning("%s: unpickled with weights_only=False (--trust-checkpoint): it could run code", path)
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                data = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(exc))
            what = (f"it holds {refused.group(1) or refused.group(2)}" if refused
                    else "it holds objects other than tensors and plain data")
            raise NnUNetImportError(
                f"{path}: not readable with weights_only=True ({what}, which torch will not unpickle without running "
                "the code it names). If you trust this file (you trained it, or know who did and how it reached you), "
                "--trust-checkpoint reads it fully") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise NnUNetImportError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(data, dict) or not isinstance(data.get("network_weights"), dict):
        raise NnUNetImportError(f"{path}: no 'network_weights': not an nnU-Net v2 checkpoint")
    return data


def configuration_plan(plans: dict, name: str) -> dict[str, Any]:
    """Configuration ``name`` of ``plans`` with ``inherits_from`` resolved (a child's keys replace its
    parent's) and, for plans written before ``architecture`` existed (nnU-Net < 2.3), that entry built from
    their ``UNet_class_name`` / ``conv_kernel_sizes`` / ``pool_op_kernel_sizes`` / ... keys."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise NnUNetImportError(f"the plans have no configuration {name!r} (they have {', '.join(configurations) or 'none'})")
    chain: list[str] = []

    def resolve(n: str) -> dict:
        if n in chain:
            raise NnUNetImportError(f"configuration {name!r}: inherits_from loops ({' -> '.join([*chain, n])})")
        if n not in configurations:
            raise NnUNetImportError(f"configuration {chain[-1]!r} inherits from {n!r}, which the plans do not have")
        chain.append(n)
        conf = dict(configurations[n])
        parent = conf.pop("inherits_from", None)
        return conf if parent is None else {**resolve(parent), **conf}

    conf = resolve(name)
    if "architecture" not in conf:
        conf["architecture"] = _architecture_from_old_plans(conf, name)
    return conf


def _architecture_from_old_plans(conf: dict, name: str) -> dict:
    """The ``architecture`` entry of an nnU-Net < 2.3 configuration, which named the U-Net class and its
    per-level settings instead (those versions' networks had conv bias, affine instance norm, leaky ReLU)."""
    need = ("UNet_class_name", "UNet_base_num_features", "unet_max_num_features", "conv_kernel_sizes",
            "pool_op_kernel_sizes", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder")
    missing = [k for k in need if k not in conf]
    if missing:
        raise NnUNetImportError(f"configuration {name!r} has neither 'architecture' nor {', '.join(missing)}: "
                                "not nnU-Net v2 plans")
    kernels = conf["conv_kernel_sizes"]
    n = len(kernels)
    dims = len(kernels[0]) if isinstance(kernels[0], (list, tuple)) else 3
    return {
        "network_class_name": str(conf["UNet_class_name"]),
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": [min(int(conf["UNet_base_num_features"]) * 2 ** i, int(conf["unet_max_num_features"]))
                                   for i in range(n)],
            "conv_op": f"torch.nn.Conv{dims}d",
            "kernel_sizes": kernels,
            "strides": conf["pool_op_kernel_sizes"],
            "n_conv_per_stage": conf["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
    }


def read_json(path: Path) -> dict | None:
    """A JSON file's content, None when absent; :class:`NnUNetImportError` when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise NnUNetImportError(f"{path}: not readable JSON ({exc})") from None
