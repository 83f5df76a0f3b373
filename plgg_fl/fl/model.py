"""The model class NVFlare builds on the server for a job's initial global model.

NVFlare's PT persistor instantiates the model from its class path and plain arguments when a job
starts without a checkpoint (stage 1, ``scratch``); :class:`SeededPlggUNet` makes those random
initial weights follow ``seed``, so the same config gives the same run."""

from __future__ import annotations

import torch

from plgg_fl.engine import PlggUNet


class SeededPlggUNet(PlggUNet):
    """:class:`plgg_fl.engine.PlggUNet` initialised under ``torch.manual_seed(seed)`` (same state-dict keys)."""

    def __init__(self, preset: str = "small", seed: int = 0, **overrides):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            super().__init__(preset=preset, **overrides)
        self.seed = int(seed)
