"""plgg_fl.engine: framework-free training, inference and evaluation (plain PyTorch + MONAI).

The contract (docs/CONTRACTS.md): PlggUNet, PRESETS, encoder_decoder_keys, freeze_encoder, load_received_weights,
TrainConfig, Trainer, validate, evaluate_cases, save_checkpoint, load_checkpoint.

Names are imported on first use (PEP 562), so ``import plgg_fl.engine`` (and every ``plgg-fl``
command's start-up) does not pay for torch + MONAI until a command actually needs them.
"""

from importlib import import_module

#: public name -> module that defines it
_EXPORTS = {
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainConfig": "config",
    "Prediction": "infer",
    "predict": "infer",
    "validate": "infer",
    "PRESETS": "networks",
    "PlggUNet": "networks",
    "encoder_decoder_keys": "networks",
    "freeze_encoder": "networks",
    "load_received_weights": "networks",
    "Trainer": "train",
    "evaluate_cases": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plgg_fl.engine' has no attribute {name!r}")
    value = getattr(import_module(f"plgg_fl.engine.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
