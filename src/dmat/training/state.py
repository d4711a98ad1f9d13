"""One model's training state, carried from epoch to epoch: its optimizer step (dmat.training.step), the best so far
and early stopping (dmat.training.best), the epoch's totals (dmat.training.epoch), and the hand-off to its
`Recorder`: the best weights, the resumable `last.pt` state and each epoch's metrics."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from dmat.config import TrainConfig
from dmat.model.checkpoint import model_checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.training.best import STOP_REASONS, BestSoFar
from dmat.training.epoch import EpochTotals
from dmat.training.losses import TrainingLoss
from dmat.training.recorder import Recorder
from dmat.training.step import OptimizerStep

EpochCallback = Callable[[int, dict[str, float]], bool]  # (epoch, metrics) -> stop now?


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    ema_model: UNet
    stop_reason: str = "epochs"  # "epochs" (ran to its cap), or why it stopped early (a key of best.STOP_REASONS)


class TrainingState:
    """What a run carries from epoch to epoch: its optimizer step (model, EMA, optimizer, random streams), the best so
    far and the epoch's totals. Exactly this is `last.pt`'s `train_state`, so a resumed run continues unchanged."""

    def __init__(self, model: UNet, diffusion: GaussianDiffusion, criterion: TrainingLoss, cfg: TrainConfig,
                 micro_batch: int, precision: str = "fp32", recorder: Recorder | None = None,
                 on_epoch_end: EpochCallback | None = None, steps_per_epoch: int | None = None):
        self.model, self.diffusion, self.criterion, self.cfg = model, diffusion, criterion, cfg
        self.validation_criterion = getattr(criterion, "unweighted", lambda: criterion)()  # see validate_batch
        self.recorder, self.on_epoch_end = recorder or Recorder(), on_epoch_end
        self.optimizing = OptimizerStep(model, criterion, cfg, micro_batch, precision, steps_per_epoch)
        self.best, self.totals = BestSoFar(), EpochTotals()
        self.epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds
        self.latest: dict | None = None  # the newest finished epoch's resumable state
        self.stopped, self.error, self.stop_reason = False, None, "epochs"

    # the optimizer step's parts, by the names the loop and its tests use
    optimizer = property(lambda self: self.optimizing.optimizer)
    trainable = property(lambda self: self.optimizing.trainable)
    ema = property(lambda self: self.optimizing.ema)
    trainer = property(lambda self: self.optimizing.trainer,
                       lambda self, value: setattr(self.optimizing, "trainer", value))

    def restore(self, resume: dict, main: bool) -> dict[str, float]:
        """Continue from a `last.pt` (and its run's best weights); returns that epoch's metrics."""
        state = resume["train_state"]
        self.optimizing.restore(state, main)
        self.best.restore(state, resume.get("best_model"))
        self.epoch = self.saved_epoch = resume["epoch"]
        return state["metrics"]

    def checkpoint(self, weights: dict, val_loss: float, **extra) -> dict:
        return model_checkpoint(self.model, self.diffusion, weights, epoch=self.epoch, val_loss=val_loss, **extra)

    def snapshot(self, metrics: dict[str, float]) -> dict:
        """A resumable checkpoint of this epoch, copied so later epochs cannot change it."""
        train_state = {**self.optimizing.state(), **self.best.state(), "metrics": metrics}
        return copy.deepcopy(self.checkpoint(self.ema.module.state_dict(), metrics["val_loss"], train_state=train_state))

    def step(self, trainer, x0: torch.Tensor) -> dict[str, float]:
        return self.optimizing.step(trainer, x0, self.epoch)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.totals = epoch, EpochTotals()
        self.model.train()

    def train_batch(self, x0: torch.Tensor) -> None:
        start = time.perf_counter()
        self.totals.train.add(self.step(self.trainer, x0), x0.shape[0])
        self.totals.seconds += time.perf_counter() - start

    def train_metrics(self, shared_seconds: float, device) -> dict[str, float]:
        return {**self.totals.train_metrics(shared_seconds, device), "lr": self.optimizing.current_lr}

    @torch.no_grad()
    def validate_batch(self, x0: torch.Tensor, generator: torch.Generator) -> None:
        """The EMA model's loss on a held-out batch, in fp32 whatever the training precision and without min-SNR
        weights: validation losses are compared across models, runs and recipes, and pick the best epoch."""
        model = self.ema.module.eval()
        loss, parts = self.validation_criterion.loss(model, x0, generator)
        self.totals.val.add({"loss": loss.item(), **parts}, x0.shape[0])

    def val_metrics(self) -> dict[str, float]:
        return self.totals.val_metrics()

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """Keep a new best, ask `on_epoch_end`, decide on early stopping, save what is due, report the epoch."""
        if self.best.improved(metrics["val_loss"], self.epoch, self.ema.module.state_dict()):
            self.recorder.on_best(self.checkpoint(self.best.weights, self.best.val))
        asked = self.on_epoch_end is not None and self.on_epoch_end(self.epoch, metrics)  # e.g. Optuna's pruner
        self.stop_reason = self.best.stop_reason(asked, self.cfg.early_stopping_patience, self.cfg.stop_when_converged)
        self.stopped = self.stop_reason != "epochs"
        self.latest = self.snapshot(metrics)
        if self.epoch in (1, self.cfg.epochs) or self.epoch % self.cfg.save_interval == 0 or self.stopped:
            self.save_pending()
        self.recorder.on_epoch(self.epoch, metrics)

    def save_pending(self) -> None:
        """Hand the newest finished epoch's state to the recorder, unless last.pt holds it already."""
        if self.latest is not None and self.latest["epoch"] > self.saved_epoch:
            self.recorder.on_checkpoint(self.latest)
            self.saved_epoch = self.latest["epoch"]

    def fail(self, error: Exception) -> None:
        """Drop out of the loop: the state after the last finished epoch is saved first (best effort: the
        error that stopped the model is the one to report)."""
        self.error = error
        with contextlib.suppress(Exception):
            self.save_pending()

    def finish(self) -> TrainResult:
        best = self.best
        self.recorder.on_end(best.summary(self.epoch, self.stop_reason, self.cfg.stop_when_converged))
        if self.stopped:
            tqdm.write(f"stopped after epoch {self.epoch} (best {best.epoch}): {STOP_REASONS[self.stop_reason]}")
        if best.weights is not None:
            self.ema.module.load_state_dict(best.weights)
        return TrainResult(best.val, best.epoch, self.epoch, self.stopped, self.ema.module.eval(), self.stop_reason)
