"""Patch-based training loop (plain PyTorch + MONAI), resumable across calls for federated rounds.

One :class:`Trainer` lives for a whole FL client process: ``train_steps(n)`` may be called once per
round; optimizer momentum and the poly LR schedule carry on between calls. New global weights are
loaded into ``trainer.model`` in place (the FL client uses
:func:`plgg_fl.engine.networks.load_received_weights`), which copies into the existing parameter
tensors, so the optimizer keeps pointing at the right tensors.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Sequence

import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss
from monai.utils import set_determinism
from torch import nn
from tqdm.auto import tqdm

from plgg_fl.engine import networks
from plgg_fl.engine.config import TrainConfig
from plgg_fl.engine.transforms import IMAGE, LABEL, augment, case_dicts, preprocess

log = logging.getLogger(__name__)


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights for ``n_outputs`` outputs (full resolution first): 1, 1/2, 1/4, ...; the
    lowest resolution gets 0 (when there is more than one output); normalised to sum to 1."""
    w = [1.0 / (2**i) for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


def poly_factor(step: int, max_steps: int, exponent: float = 0.9, warmup_steps: int = 0) -> float:
    """nnU-Net's poly LR factor (1 - step/max_steps)^exponent, held at its last value past the end;
    times a linear warm-up (step + 1) / warmup_steps over the first ``warmup_steps`` steps."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    step = min(step, max_steps - 1)
    return warm * (1.0 - step / max_steps) ** exponent


def build_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd | adamw)")


def autocast_context(device: torch.device, cfg: TrainConfig):
    """fp16 autocast on CUDA when ``cfg.amp``; bf16 autocast on CPU when ``cfg.use_cpu_bf16()``; else nothing."""
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cfg.use_cpu_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """Trains ``model`` on ``train_cases`` (manifest Cases or ``{image, label}`` dicts).

    Preprocessed volumes are cached in memory (MONAI CacheDataset); each step draws ``batch_size``
    random patches (``patch_size`` voxels, ``foreground_ratio`` of them centred on tumour) and
    augments them. Seeded: the same seed, cases and config give the same losses on CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_cases: Sequence[Any],
        freeze_encoder: bool = False,
        progress: bool = True,
    ):
        if not train_cases:
            raise ValueError("no training cases")
        self.cfg = cfg
        self.progress = progress
        set_determinism(seed=cfg.seed)
        self.device = cfg.torch_device()
        if freeze_encoder:
            networks.freeze_encoder(model)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        divs = tuple(getattr(model, "axis_divisors", (1, 1, 1)))
        if any(int(p) % d for p, d in zip(cfg.patch_size, divs)):
            need = divs[0] if len(set(divs)) == 1 else f"{divs} (per axis)"
            raise ValueError(f"patch_size {cfg.patch_size} must be a multiple of {need} for preset {cfg.preset}")
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, cfg)
        warmup = round(cfg.warmup_fraction * cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: poly_factor(s, cfg.max_steps, cfg.poly_exponent, warmup)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.amp)
        # nnU-Net: Dice over foreground only, cross-entropy over both classes, per-sample Dice.
        # (cfg.batch_dice: one Dice over the batch, nnU-Net 3d_fullres's choice; docs/learning.md)
        self.loss_fn = DiceCELoss(
            to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=cfg.batch_dice
        )
        self.step = 0
        # the step at which augmentation switches on (None: it is on, or off, from the start)
        self._augment_from = cfg.augment_warmup_steps if cfg.augment_warmup_steps > 0 and cfg.augment != "off" else None
        self.transform = self._chain("off" if self._augment_from else cfg.augment)
        self.dataset = CacheDataset(
            case_dicts(train_cases),
            transform=self.transform,
            cache_rate=cfg.cache_rate,
            num_workers=max(1, cfg.cache_num_workers),
            progress=progress,
        )
        gen = torch.Generator().manual_seed(cfg.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=len(self.dataset) >= cfg.batch_size,
            num_workers=cfg.num_workers,
            generator=gen,
            pin_memory=self.device.type == "cuda",
        )
        self._batches: Iterator[dict] = self._forever()

    def _chain(self, level: str):
        """Preprocessing (cached by the dataset) + patch sampling and augmentation at ``level``, seeded."""
        from monai.transforms import Compose

        chain = preprocess(self.cfg, with_label=True).transforms + augment(self.cfg, level).transforms
        return Compose(chain).set_random_state(seed=self.cfg.seed)

    def _forever(self) -> Iterator[dict]:
        while True:
            yield from self.loader

    def _next_batch(self) -> dict:
        """The next batch; at ``augment_warmup_steps`` the augmentation switches on (the cached,
        deterministic prefix of the chain is unchanged, so nothing is re-read)."""
        if self.step == self._augment_from:
            self.transform = self._chain(self.cfg.augment)
            self.dataset.transform = self.transform
            self._batches = self._forever()  # a new epoch: workers (if any) see the new chain
        return next(self._batches)

    def training_state(self) -> dict[str, Any]:
        """What resuming needs beyond the weights: optimizer (momentum / Adam moments), LR schedule
        position, AMP scaler and the step count (plain data; :func:`save_checkpoint` stores it)."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def restore_training_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (the model must already hold the saved weights). The
        patch sampling restarts from the seed, so a resumed run sees other patches than an
        uninterrupted one would; optimizer and schedule continue exactly."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self._augment_from is not None and self.step >= self._augment_from:
            self.transform = self._chain(self.cfg.augment)  # past the switch-on step: augmentation is on
            self.dataset.transform = self.transform
            self._batches = self._forever()

    def loss(self, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """DiceCE on the full-resolution output, or nnU-Net-weighted over the deep-supervision outputs.

        ``outputs``: [B, 2, X, Y, Z] or [B, K, 2, X, Y, Z] (deep supervision); ``label``: [B, 1, X, Y, Z].
        """
        if outputs.dim() == 6:
            if not self.cfg.deep_supervision:
                return self.loss_fn(outputs[:, 0], label)
            weights = deep_supervision_weights(outputs.shape[1])
            return sum(w * self.loss_fn(outputs[:, k], label) for k, w in enumerate(weights) if w > 0)
        return self.loss_fn(outputs, label)

    def train_steps(self, n: int, progress: bool | None = None) -> dict[str, float]:
        """Run ``n`` optimizer steps. Returns ``{"loss": mean loss, "steps": n, "total_steps", "lr"}``."""
        progress = self.progress if progress is None else progress
        self.model.train()
        losses: list[float] = []
        bar = tqdm(range(n), desc="train", disable=not progress, leave=False)
        for _ in bar:
            batch = self._next_batch()
            x = batch[IMAGE].to(self.device, non_blocking=True)
            y = batch[LABEL].to(self.device, non_blocking=True)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast_context(self.device, self.cfg):
                out = self.model(x)
            loss = self.loss(out.float(), y)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        mean = sum(losses) / len(losses) if losses else math.nan
        return {"loss": mean, "steps": n, "total_steps": self.step, "lr": self.optimizer.param_groups[0]["lr"]}

    def fit(
        self,
        total_steps: int,
        val_cases: Sequence[Any] | None = None,
        val_every: int = 250,
        on_epoch=None,
    ) -> list[dict[str, float]]:
        """Train to ``total_steps`` in blocks ("epochs") of ``val_every`` steps; after each block log the
        mean loss and (with ``val_cases``) the validation Dice. ``on_epoch(record)`` is called per block."""
        from plgg_fl.engine.infer import validate

        history = []
        epoch = 0
        while self.step < total_steps:
            n = min(val_every, total_steps - self.step)
            rec: dict[str, Any] = {"epoch": epoch, **self.train_steps(n)}
            if val_cases:
                rec["val_dice"] = validate(self.model, val_cases, self.cfg, progress=False)["val_dice"]
            log.info(
                "epoch %d step %d loss %.4f lr %.2e%s",
                epoch,
                self.step,
                rec["loss"],
                rec["lr"],
                f" val_dice {rec['val_dice']:.4f}" if "val_dice" in rec else "",
            )
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
            epoch += 1
        return history
