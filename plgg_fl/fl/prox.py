"""FedProx on top of the engine's Trainer: loss + mu/2 * ||w - w_global||^2 over trainable weights.

The server sends ``mu`` in the task meta (NVFlare FedAvg ``fedprox_mu``); the client script calls
:meth:`ProxTrainer.set_global` with the received global weights every round.
"""

from __future__ import annotations

import torch

from plgg_fl.engine import Trainer


class ProxTrainer(Trainer):
    """:class:`plgg_fl.engine.Trainer` with the FedProx proximal term (``mu`` = 0: plain Trainer)."""

    mu: float = 0.0
    _global: list[torch.Tensor] | None = None

    def set_global(self, mu: float) -> None:
        """Snapshot the current (just received) trainable weights as the proximal anchor."""
        self.mu = float(mu or 0.0)
        self._global = [p.detach().clone() for p in self.trainable] if self.mu else None

    def loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        base = super().loss(outputs, label)
        if not self.mu or self._global is None:
            return base
        prox = sum(((p - g) ** 2).sum() for p, g in zip(self.trainable, self._global))
        return base + 0.5 * self.mu * prox
