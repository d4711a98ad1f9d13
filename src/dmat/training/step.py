"""The optimizer step of one model: micro-batches (gradient accumulation when a batch does not fit in memory),
DDP gradient sync, autocast, gradient clipping, AdamW at the step's learning rate (dmat.training.schedule) and the EMA
of the weights, each model with its own random
streams (training noise, dropout) so that models trained in one loop draw what they would draw alone."""

from __future__ import annotations

import contextlib
import math

import torch
from torch.optim.swa_utils import AveragedModel

from dmat import distributed
from dmat.config import TrainConfig
from dmat.errors import DmatError
from dmat.model.unet import UNet
from dmat.runtime import autocast
from dmat.training.autotune import compiled
from dmat.training.losses import TrainingLoss
from dmat.training.schedule import LearningRate

NOISE_SEED = 7919  # the training noise's generator is seeded seed + NOISE_SEED: a stream apart from dropout's (seed)


def ema_average(decay: float):
    """EMA of the weights with a warm-up: the decay used at update n is min(decay, (1+n)/(10+n)), so
    the average follows the weights closely early on instead of staying near the random init. The
    warm-up is TensorFlow's `ExponentialMovingAverage(num_updates=...)`, also used by the original
    DDPM code (Ho et al. 2020); the EMA itself is Polyak averaging as in Song & Ermon (2020).

    An `AveragedModel` multi_avg_fn: one fused lerp over all tensors of a device and dtype (avg <- avg +
    (1-d)(current - avg), i.e. d*avg + (1-d)*current) instead of one Python call per tensor."""

    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = num_averaged.item()
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - min(decay, (1 + n) / (10 + n)))
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # a counter buffer is followed, not averaged
                a.copy_(c)

    return multi_avg_fn


def micro_batch_size(model, criterion: TrainingLoss, batch: torch.Tensor, device, precision: str = "fp32") -> int:
    """One forward/backward pass before the long run, so a wrong shape or a non-finite loss fails in
    seconds. A batch that does not fit in the device's memory is halved until it does; `fit` then takes
    each batch in micro-batches of the size returned, with the same optimizer step (gradient accumulation)."""
    model.to(device)
    size = batch.shape[0]
    while (loss := _try_backward(model, criterion, batch[:size].to(device), precision)) is None:
        if size == 1:
            raise DmatError(f"not even one image fits in {device} memory: use a smaller model or another device")
        size = (size + 1) // 2
    if not math.isfinite(loss):
        raise DmatError("the first batch already gives a non-finite loss: check the data and learning rate")
    return size


def _try_backward(model, criterion: TrainingLoss, batch: torch.Tensor, precision: str) -> float | None:
    """The loss of one forward/backward pass, or None when it ran out of memory."""
    try:
        with autocast(batch.device, precision):
            loss, _ = criterion.loss(model, batch)
        loss.backward()
        return loss.item()
    except torch.OutOfMemoryError:
        pass  # leave the except block first, so the traceback's tensors are freed
    finally:
        model.zero_grad(set_to_none=True)
    if batch.is_cuda:
        torch.cuda.empty_cache()
    return None


class DropoutStream:
    """torch's global generator (what dropout draws from) as one model's own stream: swapped in around the
    model's steps, so models trained in one loop each draw what they would draw alone. CPU and CUDA."""

    def __init__(self, seed: int, device: torch.device):
        self.cuda = device if device.type == "cuda" else None
        self.state = (torch.Generator().manual_seed(seed).get_state(),
                      torch.Generator(device).manual_seed(seed).get_state() if self.cuda else None)

    def _current(self) -> tuple:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.cuda) if self.cuda else None

    def _load(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.cuda)

    @contextlib.contextmanager
    def active(self):
        outside = self._current()
        self._load(self.state)
        try:
            yield
        finally:
            self.state = self._current()
            self._load(outside)


class OptimizerStep:
    """A model's optimizer (AdamW over its weights and its loss's own parameters), its learning rate by step, EMA,
    random streams and what computes the loss (`trainer`: the model, compiled where asked, or DDP around it).
    `steps_per_epoch` (the loop's batches per epoch) places each step on the schedule; a constant lr needs none."""

    def __init__(self, model: UNet, criterion: TrainingLoss, cfg: TrainConfig, micro_batch: int,
                 precision: str = "fp32", steps_per_epoch: int | None = None):
        self.model, self.criterion, self.cfg = model, criterion, cfg
        self.micro_batch, self.precision = micro_batch, precision
        self.extras = list(getattr(criterion, "trainable_parameters", list)())
        self.trainable = [*model.parameters(), *self.extras]
        if steps_per_epoch is None and (cfg.lr_schedule != "constant" or cfg.lr_warmup_epochs):
            raise DmatError("a learning-rate schedule or warm-up needs the steps per epoch (training.fit passes them)")
        self.lr, self.steps = LearningRate(cfg, model.config, steps_per_epoch or 1), 0  # steps: optimizer steps taken
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.lr.at(0), weight_decay=cfg.weight_decay,
                                           foreach=True)  # CPU too: one kernel per tensor group, not per tensor
        self.ema = AveragedModel(model, multi_avg_fn=ema_average(cfg.ema_decay), use_buffers=True)
        device, seed = next(model.parameters()).device, cfg.seed + distributed.rank()
        self.noise = torch.Generator(device).manual_seed(seed + NOISE_SEED)
        self.dropout = DropoutStream(seed, device)
        self.trainer: torch.nn.Module = compiled(model, cfg.compile)  # computes the loss: the model, or DDP around it

    def step(self, trainer, x0: torch.Tensor, epoch: int) -> dict[str, float]:
        """One optimizer step on a batch, taken in micro-batches when the batch does not fit in memory:
        each micro-batch's mean loss is weighted by its share of the batch, so the summed gradients are
        the whole batch's mean gradient and clipping, the step and the EMA update see the same numbers."""
        chunks = x0.split(self.micro_batch)
        means: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for i, chunk in enumerate(chunks):
            share = chunk.shape[0] / x0.shape[0]
            with distributed.accumulating(trainer, last=i == len(chunks) - 1), self.dropout.active():
                with autocast(chunk.device, self.precision):  # the forward pass; backward follows its dtypes
                    loss, parts = self.criterion.loss(trainer, chunk, self.noise)
                if not distributed.all_finite(loss):
                    raise DmatError(f"loss became non-finite at epoch {epoch}: lower --lr")
                (loss * share).backward()
            for key, value in {"loss": loss.item(), **parts}.items():
                means[key] = means.get(key, 0.0) + value * share
        distributed.average_gradients(self.extras)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self._set_lr(self.lr.at(self.steps))
        self.optimizer.step()
        self.steps += 1
        self.ema.update_parameters(self.model)
        return means

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def current_lr(self) -> float:
        """The lr of the last step taken (of the first, before any)."""
        return self.lr.at(max(0, self.steps - 1))

    def state(self) -> dict:
        """Its part of `last.pt`'s `train_state` (the keys are the checkpoint format's: never renamed)."""
        cpu_rng, cuda_rng = self.dropout.state
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(), "torch_rng": cpu_rng, "noise_rng": self.noise.get_state(),
                "objective_parameters": [p.detach() for p in self.extras], "optimizer_steps": self.steps,
                **({"cuda_rng": cuda_rng} if cuda_rng is not None else {})}

    def restore(self, state: dict, main: bool) -> None:
        """Continue from a `train_state`: the schedule at the step it reached; the learning rate and weight decay are
        this run's config's (a resume may change them: --lr after a non-finite loss)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        adam = next(iter(self.optimizer.state.values()), {}).get("step", 0)  # what a last.pt from before counted
        self.steps = int(state.get("optimizer_steps", adam))
        for group in self.optimizer.param_groups:
            group.update(lr=self.lr.at(self.steps), weight_decay=self.cfg.weight_decay)
        self.ema.load_state_dict(state["ema"])
        with torch.no_grad():
            for param, saved in zip(self.extras, state["objective_parameters"]):
                param.copy_(saved)
        if main:
            self.dropout.state = (state["torch_rng"], state.get("cuda_rng", self.dropout.state[1]))
            if "noise_rng" in state:  # a last.pt from before the noise had its own generator has none
                self.noise.set_state(state["noise_rng"])
