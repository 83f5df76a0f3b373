"""Checkpoints that are enough on their own for inference.

A checkpoint (``torch.save`` of plain data; loads with ``weights_only=True``) holds::

    format: "plgg-fl-engine/1"
    model_class: "plgg_fl.engine.networks.PlggUNet"
    model_args: {"preset": ..., **overrides}     # PlggUNet(**model_args) rebuilds the network
    state_dict: {name: tensor}                   # CPU tensors
    train_config: TrainConfig.to_dict()
    preprocessing: transforms.preprocessing_settings(cfg)
    step: int                                    # optimizer steps taken
    meta: dict                                   # free-form (stage, site, round, ...)
    training_state: dict                         # optional: optimizer, LR schedule, AMP scaler, step
                                                 # (Trainer.training_state; what `plgg-fl train --resume` needs)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.networks import PlggUNet
from plgg_fl.engine.transforms import preprocessing_settings

FORMAT = "plgg-fl-engine/1"


def save_checkpoint(path: str | Path, model: nn.Module, cfg: TrainConfig, step: int = 0, meta: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Write ``model``'s weights with everything needed to rebuild and run it (and, with
    ``training_state``, to resume training). Atomic (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_args": dict(getattr(model, "init_args", {})),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "train_config": cfg.to_dict(),
        "preprocessing": preprocessing_settings(cfg),
        "step": int(step),
        "meta": dict(meta or {}),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (see module docstring)."""
    ck = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not a plgg-fl engine checkpoint")
    return ck


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state dict, engine train_config or None)`` from any checkpoint the project reads: an engine
    checkpoint, an NVFlare PyTorch global model (``{"model": state dict, ...}``) or a bare state dict.
    The one reader every layer uses; ``weights_only=True`` (a checkpoint cannot run code). Raises
    ValueError naming the file when it holds no state dict of tensors."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused (code objects), truncated or not a torch file
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    cfg = None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        data, cfg = data["state_dict"], data.get("train_config")
    else:
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: no state dict of tensors (neither an engine checkpoint, an NVFlare global model "
                         "nor a state dict)")
    return dict(data), cfg


def nvflare_form(path: str | Path) -> dict[str, Any] | None:
    """``{"model": state dict}`` - what NVFlare's PT persistor reads - for an engine checkpoint; None for a
    file already in a form the persistor reads (NVFlare global model, bare state dict). ValueError (from
    :func:`read_weights`) for a file holding no state dict."""
    state, engine_config = read_weights(path)  # a train config comes with engine checkpoints only
    return {"model": state} if engine_config is not None else None


def model_and_config(path: str | Path, fallback: TrainConfig) -> tuple[PlggUNet, TrainConfig]:
    """A :class:`PlggUNet` (eval mode, CPU) with the weights of ``path`` (any format :func:`read_weights`
    reads) and the config it runs with: the checkpoint's own train config where it has one (an engine
    checkpoint), else ``fallback`` (e.g. rebuilt from the run's YAML for an NVFlare global model).
    Every tensor must fit."""
    from plgg_fl.engine.networks import load_received_weights

    state, own = read_weights(path)
    cfg = TrainConfig.from_dict(own) if own else fallback
    model = PlggUNet(preset=cfg.preset)
    load_received_weights(model, state)
    return model.eval(), cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PlggUNet, TrainConfig, dict[str, Any]]:
    """Rebuild the model (eval mode, on ``device``), its TrainConfig, and ``meta`` (plus ``step``,
    ``preprocessing`` and ``path`` keys added)."""
    ck = read_checkpoint(path)
    model = PlggUNet(**ck["model_args"])
    model.load_state_dict(ck["state_dict"])
    model.to(device).eval()
    cfg = TrainConfig.from_dict(ck["train_config"])
    meta = {**ck.get("meta", {}), "step": ck["step"], "preprocessing": ck["preprocessing"], "path": str(path)}
    return model, cfg, meta


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks: how model cards and imports name the exact weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
