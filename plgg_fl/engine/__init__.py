"""plgg_fl.engine: framework-free training, inference and evaluation (plain PyTorch + MONAI).

The contract (docs/CONTRACTS.md): PlggUNet, PRESETS, encoder_decoder_keys, freeze_encoder,
TrainConfig, Trainer, validate, evaluate_cases, save_checkpoint, load_checkpoint.
"""

from plgg_fl.engine.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.infer import Prediction, predict, validate
from plgg_fl.engine.networks import PRESETS, PlggUNet, encoder_decoder_keys, freeze_encoder, unfreeze_encoder
from plgg_fl.engine.train import Trainer

__all__ = [
    "PRESETS",
    "PlggUNet",
    "Prediction",
    "TrainConfig",
    "Trainer",
    "encoder_decoder_keys",
    "evaluate_cases",
    "freeze_encoder",
    "load_checkpoint",
    "predict",
    "read_checkpoint",
    "save_checkpoint",
    "unfreeze_encoder",
    "validate",
]


def __getattr__(name):  # evaluate is imported lazily (pulls in csv/json writers and scipy)
    if name == "evaluate_cases":
        from plgg_fl.engine.evaluate import evaluate_cases

        return evaluate_cases
    raise AttributeError(name)
