"""The one training loop, shared by the teacher and every student.

What is trained is decided by an `Objective` (the DDPM loss for the teacher, distillation losses
for a student); the loop owns everything else: device, smoke check (and micro-batches when a batch
does not fit in memory), EMA weights, validation on the held-out split with fixed noise, best model
by validation loss, early stopping, checkpoints, the progress. Where metrics and checkpoints go is a
`Recorder`'s business (MLflow in a real run, nothing in a test): this module knows no tracking at all.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from dmat import distributed
from dmat.checkpoint import model_checkpoint
from dmat.config import TrainConfig
from dmat.data import DataSplits, loader
from dmat.diffusion import GaussianDiffusion
from dmat.errors import DmatError
from dmat.recorder import Recorder
from dmat.runtime import seed_everything
from dmat.unet import UNet

VALIDATION_SEED = 1234  # the same noise and timesteps for every epoch's validation
EpochCallback = Callable[[int, dict[str, float]], bool]  # (epoch, metrics) -> stop now?


class Objective(Protocol):
    """May also define `trainable_parameters()`: parameters of its own (e.g. distillation projections)
    that the optimizer trains beside the model's."""

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch of clean images, plus its named components."""


@dataclass
class DiffusionObjective:
    """The DDPM training loss: what the teacher (and a student trained from scratch) minimises."""

    diffusion: GaussianDiffusion

    def loss(self, model, x0, generator=None):
        loss = self.diffusion.training_loss(model, x0, generator)
        return loss, {"task_loss": loss.item()}


def ema_average(decay: float):
    """EMA of the weights with a warm-up: the decay used at update n is min(decay, (1+n)/(10+n)), so
    the average follows the weights closely early on instead of staying near the random init. The
    warm-up is TensorFlow's `ExponentialMovingAverage(num_updates=...)`, also used by the original
    DDPM code (Ho et al. 2020); the EMA itself is Polyak averaging as in Song & Ermon (2020)."""

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + num_averaged.item()) / (10 + num_averaged.item()))
        return d * averaged + (1 - d) * current

    return avg_fn


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    ema_model: UNet


@torch.no_grad()
def validate(model, objective: Objective, val_loader, device) -> dict[str, float]:
    """Mean loss components on the held-out split, with noise fixed across epochs."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    totals: dict[str, float] = {}
    count = 0
    for batch in val_loader:
        x0 = batch.to(device)
        loss, parts = objective.loss(model, x0, generator)
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] = totals.get(key, 0.0) + value * x0.shape[0]
        count += x0.shape[0]
    return {f"val_{k}": v / count for k, v in totals.items()}


def micro_batch_size(model, objective: Objective, batch: torch.Tensor, device) -> int:
    """One forward/backward pass before the long run, so a wrong shape or a non-finite loss fails in
    seconds. A batch that does not fit in the device's memory is halved until it does; `fit` then takes
    each batch in micro-batches of the size returned, with the same optimizer step (gradient accumulation)."""
    model.to(device)
    size = batch.shape[0]
    while (loss := _try_backward(model, objective, batch[:size].to(device))) is None:
        if size == 1:
            raise DmatError(f"not even one image fits in {device} memory: use a smaller model or another device")
        size = (size + 1) // 2
    if not math.isfinite(loss):
        raise DmatError("the first batch already gives a non-finite loss: check the data and learning rate")
    return size


def _try_backward(model, objective: Objective, batch: torch.Tensor) -> float | None:
    """The loss of one forward/backward pass, or None when it ran out of memory."""
    try:
        loss, _ = objective.loss(model, batch)
        loss.backward()
        return loss.item()
    except torch.OutOfMemoryError:
        pass  # leave the except block first, so the traceback's tensors are freed
    finally:
        model.zero_grad(set_to_none=True)
    if batch.is_cuda:
        torch.cuda.empty_cache()
    return None


class _TrainingState:
    """What a run carries from epoch to epoch: the model, its EMA, the optimizer, the best so far.
    Exactly this (plus the RNG) is `last.pt`'s `train_state`, so a resumed run continues unchanged."""

    def __init__(self, model: UNet, diffusion: GaussianDiffusion, objective: Objective, cfg: TrainConfig,
                 micro_batch: int):
        self.model, self.diffusion, self.objective, self.cfg = model, diffusion, objective, cfg
        self.micro_batch = micro_batch
        self.extras = list(getattr(objective, "trainable_parameters", list)())
        self.trainable = [*model.parameters(), *self.extras]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = AveragedModel(model, avg_fn=ema_average(cfg.ema_decay), use_buffers=True)
        self.epoch, self.best_val, self.best_epoch, self.since_best = 0, math.inf, 0, 0
        self.best_weights: dict | None = None

    def restore(self, resume: dict, main: bool) -> dict[str, float]:
        """Continue from a `last.pt` (and its run's best weights); returns that epoch's metrics."""
        state = resume["train_state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a resume may change them (--lr after a non-finite loss)
            group.update(lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.ema.load_state_dict(state["ema"])
        with torch.no_grad():
            for param, saved in zip(self.extras, state["objective_parameters"]):
                param.copy_(saved)
        self.epoch, self.best_weights = resume["epoch"], resume.get("best_model")
        self.best_val, self.best_epoch, self.since_best = state["best_val_loss"], state["best_epoch"], state["epochs_since_best"]
        if main:
            torch.set_rng_state(state["torch_rng"])
        return state["metrics"]

    def improved(self, val_loss: float) -> bool:
        """Record this epoch's validation loss; True (and the EMA weights kept) if it is a new best."""
        if val_loss >= self.best_val:
            self.since_best += 1
            return False
        self.best_val, self.best_epoch, self.since_best = val_loss, self.epoch, 0
        self.best_weights = copy.deepcopy(self.ema.module.state_dict())
        return True

    def checkpoint(self, weights: dict, val_loss: float, **extra) -> dict:
        return model_checkpoint(self.model, self.diffusion, weights, epoch=self.epoch, val_loss=val_loss, **extra)

    def snapshot(self, metrics: dict[str, float]) -> dict:
        """A resumable checkpoint of this epoch, copied so later epochs cannot change it."""
        train_state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "ema": self.ema.state_dict(), "best_val_loss": self.best_val, "best_epoch": self.best_epoch,
                       "epochs_since_best": self.since_best, "torch_rng": torch.get_rng_state(),
                       "objective_parameters": [p.detach() for p in self.extras], "metrics": metrics}
        return copy.deepcopy(self.checkpoint(self.ema.module.state_dict(), metrics["val_loss"], train_state=train_state))

    def train_epoch(self, trainer, train_loader, device, main: bool) -> dict[str, float]:
        """One pass over the training data: mean loss components over all processes, and throughput."""
        self.model.train()
        train_loader.sampler.set_epoch(self.epoch)
        start, sums, n = time.perf_counter(), {}, 0
        for batch in tqdm(train_loader, desc=f"epoch {self.epoch}", leave=False, unit="batch", dynamic_ncols=True,
                          disable=not main):
            x0 = batch.to(device)
            for key, value in self.step(trainer, x0).items():
                sums[key] = sums.get(key, 0.0) + value * x0.shape[0]
            n += x0.shape[0]
        seconds = time.perf_counter() - start
        totals = distributed.sum_over_processes({**sums, "_images": n}, device)
        n = totals.pop("_images")
        return {**{f"train_{k}": v / n for k, v in totals.items()}, "epoch_seconds": seconds,
                "train_images_per_s": n / seconds}

    def step(self, trainer, x0: torch.Tensor) -> dict[str, float]:
        """One optimizer step on a batch, taken in micro-batches when the batch does not fit in memory:
        each micro-batch's mean loss is weighted by its share of the batch, so the summed gradients are
        the whole batch's mean gradient and clipping, the step and the EMA update see the same numbers."""
        chunks = x0.split(self.micro_batch)
        means: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for i, chunk in enumerate(chunks):
            share = chunk.shape[0] / x0.shape[0]
            with distributed.accumulating(trainer, last=i == len(chunks) - 1):
                loss, parts = self.objective.loss(trainer, chunk)
                if not distributed.all_finite(loss):
                    raise DmatError(f"loss became non-finite at epoch {self.epoch}: lower --lr")
                (loss * share).backward()
            for key, value in {"loss": loss.item(), **parts}.items():
                means[key] = means.get(key, 0.0) + value * share
        distributed.average_gradients(self.extras)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return means


def fit(model: UNet, diffusion: GaussianDiffusion, objective: Objective, splits: DataSplits, cfg: TrainConfig,
        device: torch.device, recorder: Recorder | None = None, resume: dict | None = None,
        on_epoch_end: EpochCallback | None = None, micro_batch: int | None = None) -> TrainResult:
    """Train `model` under `objective`; returns the best EMA model by validation loss (kept in memory).

    `recorder` receives metrics and checkpoints on the main process (rank 0 under torchrun); without
    one nothing is kept but the result. `on_epoch_end(epoch, metrics)` returning True stops training
    after that epoch (e.g. an Optuna pruner). `micro_batch` is what `micro_batch_size` found (a caller
    that checked it before creating its run passes it); fit checks it itself otherwise.

    `resume` is the `last.pt` of an interrupted run (plus its best weights as `best_model`): training
    continues after its epoch. A resumable state is saved after the first epoch, every save interval
    and at the end; if the run is interrupted (Ctrl-C, a non-finite loss, any error), the state after
    the last finished epoch goes to `recorder.on_checkpoint` first, so a resume repeats no logged epoch
    and skips none.
    """
    main = distributed.is_main()
    recorder = recorder if recorder is not None and main else Recorder()
    seed_everything(cfg.seed + distributed.rank())
    model.to(device)
    train_loader, val_loader = _loaders(splits, cfg)
    if micro_batch is None:
        micro_batch = micro_batch_size(model, objective, next(iter(train_loader)), device)
    run = _TrainingState(model, diffusion, objective, cfg, micro_batch)
    if resume:
        recorder.on_resume(resume["epoch"], run.restore(resume, main))
    trainer = distributed.wrap(model, device)
    saved_epoch, snapshot, stop = run.epoch, None, False
    progress = tqdm(range(run.epoch + 1, cfg.epochs + 1), desc="epochs", unit="epoch", dynamic_ncols=True,
                    disable=not main)
    try:
        for run.epoch in progress:
            metrics = run.train_epoch(trainer, train_loader, device, main)
            metrics.update(distributed.from_main(validate(run.ema.module, objective, val_loader, device) if main else None))
            progress.set_postfix(train=f"{metrics['train_loss']:.4f}", val=f"{metrics['val_loss']:.4f}")
            if run.improved(metrics["val_loss"]):
                recorder.on_best(run.checkpoint(run.best_weights, run.best_val))
            pruned = on_epoch_end is not None and on_epoch_end(run.epoch, metrics)
            stop = bool(cfg.early_stopping_patience and run.since_best >= cfg.early_stopping_patience) or pruned
            snapshot = run.snapshot(metrics)
            if run.epoch in (1, cfg.epochs) or run.epoch % cfg.save_interval == 0 or stop:
                recorder.on_checkpoint(snapshot)
                saved_epoch = run.epoch
            recorder.on_epoch(run.epoch, metrics)
            if stop:
                break
    except BaseException:
        if snapshot is not None and snapshot["epoch"] > saved_epoch:
            with contextlib.suppress(Exception):  # best effort: the error that stopped the run is the one to report
                recorder.on_checkpoint(snapshot)
        raise
    finally:
        progress.close()  # ends its line, so a message that follows starts on its own
    recorder.on_end({"best_val_loss": run.best_val, "best_epoch": run.best_epoch, "epochs_run": run.epoch})
    if run.best_weights is not None:
        run.ema.module.load_state_dict(run.best_weights)
    return TrainResult(run.best_val, run.best_epoch, run.epoch, stop, run.ema.module.eval())


def _loaders(splits: DataSplits, cfg: TrainConfig):
    """This process's shuffled shard of the training split, and the whole validation split in order."""
    train = loader(splits.train, distributed.per_process_batch(cfg.batch_size), shuffle=True,
                   sampler=distributed.train_sampler(splits.train, cfg.seed), num_workers=cfg.num_workers)
    return train, loader(splits.val, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
