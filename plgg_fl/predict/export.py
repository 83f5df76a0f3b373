"""``plgg-fl export --model CKPT --out DIR``: a self-contained inference model plus a JSON model card.

``OUT/model.pt2`` is a ``torch.export`` program of the network in eval mode (input
``[B, 1, *window]`` z-scored T2 windows, B dynamic 1-64; output ``[B, 2, *window]`` logits, softmax
channel 1 = whole tumour). ``torch.export.load`` runs it without plgg-fl's training code.
``OUT/model_card.json`` records what is needed to use it correctly and where it came from: preset
and arguments, input spacing (mm) and normalisation, sliding-window settings, the training
config, the checkpoint's meta (stages, sites, rounds, metrics when present) and package versions.

:func:`load_model` opens either form (engine checkpoint file or export folder) for ``predict``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plgg_fl.engine.checkpoint import file_sha256
from plgg_fl.predict.io import SetupError, atomic_write

log = logging.getLogger(__name__)
FORMAT = "plgg-fl-export/1"
WEIGHTS, CARD = "model.pt2", "model_card.json"
MAX_BATCH = 64
_META_KEYS = ("stage", "stages", "site", "sites", "round", "rounds", "num_rounds", "metrics", "val_dice", "test_metrics", "val_metrics")


class ExportedNet(nn.Module):
    """Wraps an exported graph so the engine can call ``eval()``/``train()`` on it (export forbids both)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.net = graph

    def train(self, mode: bool = True) -> "ExportedNet":
        self.training = bool(mode)  # the graph was captured in eval mode; nothing to switch
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python's and the installed versions of the packages a model card names (and ``extra``)."""
    out = {"python": platform.python_version()}
    for pkg in ("plgg-fl", "torch", "monai", "numpy", "nibabel", "SimpleITK", "nvflare", *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _plain(obj: Any) -> Any:
    """JSON-safe copy (tensors and numpy scalars -> numbers/lists, other objects -> str)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class ModelError(SetupError):
    """``--model`` (or ``export``'s checkpoint) exists but is not a plgg-fl model."""


_WANTED = "expected an engine checkpoint (.pt) saved by plgg-fl or a folder made by `plgg-fl export`"


def _what_file(path: Path) -> str:
    """A short guess at what ``path`` is, from its first bytes (for the error message)."""
    if path.is_dir():
        return "a folder that is not a complete plgg-fl export (model_card.json or model.pt2 unreadable)"
    with open(path, "rb") as f:
        head = f.read(352)
    if not head:
        return "an empty file"
    if head[:2] == b"\x1f\x8b" or head[344:347] in (b"n+1", b"ni1"):
        return "a (gzip-compressed) file such as a NIfTI scan, not a model"
    if head[:4] == b"PK\x03\x04":
        return "a PyTorch/zip file that is truncated, corrupt, or not saved by plgg-fl"
    return "not a PyTorch checkpoint"


def _open_model(path: Path, load: Any) -> Any:
    """``load()``, with any failure to read the model turned into one :class:`ModelError` naming ``path``.

    torch's own message is not passed on: for a file it cannot unpickle safely it advises loading
    with ``weights_only=False``, which would run arbitrary code from an unknown file.
    """
    try:
        return load()
    except Exception:  # noqa: BLE001 - what failed is reported as what the file is
        log.debug("%s: cannot be loaded as a model", path)
        raise ModelError(f"not a plgg-fl model: {_what_file(path)}; {_WANTED}", path) from None


def export_model(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export engine checkpoint ``ckpt`` to folder ``out`` (``model.pt2`` + ``model_card.json``)."""
    from plgg_fl.engine.checkpoint import load_checkpoint, read_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise ModelError("checkpoint not found", ckpt)
    if not overwrite and any((out / name).exists() for name in (WEIGHTS, CARD)):
        raise SetupError("export already there; pass --overwrite to replace it", out)
    raw = _open_model(ckpt, lambda: read_checkpoint(ckpt))
    model, cfg, meta = _open_model(ckpt, lambda: load_checkpoint(ckpt, device="cpu"))
    model.eval()
    window = tuple(int(s) for s in cfg.patch_size)
    example = torch.zeros(2, 1, *window)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    out.mkdir(parents=True, exist_ok=True)
    weights = atomic_write(out / WEIGHTS, lambda p: torch.export.save(program, str(p)), overwrite=overwrite)
    training = {k: meta[k] for k in _META_KEYS if k in meta}
    card = {
        "format": FORMAT,
        "weights": WEIGHTS,
        "weights_format": "torch.export (torch.export.load(path).module())",
        "weights_sha256": file_sha256(weights),
        "exported_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"class": raw["model_class"], "preset": model.preset, "args": raw["model_args"], "arch": model.arch},
        "input": {
            "modality": "T2 (skull-stripped, or brain mask given)",
            "window_voxels": list(window),
            "batch": f"1-{MAX_BATCH}",
            "spacing_mm": list(cfg.spacing_mm) if cfg.spacing_mm else None,
            "orientation": cfg.orientation,
            "normalisation": raw["preprocessing"].get("normalisation"),
            "n4": bool(cfg.extra.get("n4", False)),
        },
        "output": "logits [B, 2, *window]; softmax channel 1 = whole tumour; mask = probability > 0.5",
        "preprocessing": raw["preprocessing"],
        "inference": {
            "sw_overlap": cfg.sw_overlap,
            "sw_batch_size": cfg.sw_batch_size,
            "tta_mirror": cfg.tta,
            "keep_largest_component": cfg.keep_largest,
            "mode": "gaussian",
        },
        "train_config": cfg.to_dict(),
        "training": {"step": raw["step"], **training},
        "checkpoint_meta": {k: v for k, v in raw.get("meta", {}).items()},
        "source_checkpoint": {"name": ckpt.name, "sha256": file_sha256(ckpt)},
        "versions": package_versions(),
    }
    atomic_write(out / CARD, lambda p: p.write_text(json.dumps(_plain(card), indent=2), encoding="utf-8"), overwrite=overwrite)
    return out


def load_model(path: str | Path, device: str = "auto") -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model on ``device`` in eval mode, TrainConfig, card-or-meta) from a checkpoint file or export folder."""
    from plgg_fl.engine.checkpoint import load_checkpoint
    from plgg_fl.engine.config import TrainConfig, resolve_device

    path = Path(path)
    dev = resolve_device(device)
    if not path.exists():
        raise ModelError("model not found: give an engine checkpoint or an export folder", path)
    if path.is_dir():
        card_path = path / CARD
        if not card_path.is_file():
            raise ModelError(f"not a plgg-fl model: no {CARD} in this folder; {_WANTED}", path)
        card = _open_model(path, lambda: json.loads(card_path.read_text(encoding="utf-8")))
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise ModelError(f"unknown format {card.get('format') if isinstance(card, dict) else None!r}, expected {FORMAT}", card_path)
        program = _open_model(path, lambda: torch.export.load(str(path / card["weights"])))
        if dev.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, dev)
        cfg = TrainConfig.from_dict(card["train_config"]).replace(device=dev.type)
        return ExportedNet(program.module()), cfg, card
    model, cfg, meta = _open_model(path, lambda: load_checkpoint(path, device="cpu"))
    return model.to(dev), cfg.replace(device=dev.type), meta
