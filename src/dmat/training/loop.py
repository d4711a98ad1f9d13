"""The one training loop, shared by the teacher and every student.

What is trained is decided by an `Objective` (the DDPM loss for the teacher, distillation losses
for a student); the loop owns everything else: device, smoke check (and micro-batches when a batch
does not fit in memory), EMA weights, validation on the held-out split with fixed noise, best model
by validation loss, early stopping, checkpoints, the progress. Where metrics and checkpoints go is a
`Recorder`'s business (MLflow in a real run, nothing in a test): this module knows no tracking at all.

`fit` trains one model; `fit_together` trains several in one pass over the same batches (students of
one teacher, whose frozen forward pass they can then share). All randomness a model's training draws
is its own: the timesteps and noise from a generator seeded with `seed`, dropout from its own stream
of torch's global generator, the data order from the sampler's seed. So a model trained with others
gets exactly the numbers it gets alone, and a resumed run (both streams are in `last.pt`) continues
unchanged.
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
from dmat.config import TrainConfig
from dmat.data import DataSplits, loader
from dmat.errors import DmatError
from dmat.model.checkpoint import model_checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.runtime import autocast, resolve_precision
from dmat.training.recorder import Recorder

VALIDATION_SEED = 1234  # the same noise and timesteps for every epoch's validation
NOISE_SEED = 7919  # the training noise's generator is seeded seed + NOISE_SEED: a stream apart from dropout's (seed)
EpochCallback = Callable[[int, dict[str, float]], bool]  # (epoch, metrics) -> stop now?


class Objective(Protocol):
    """May also define `trainable_parameters()`: parameters of its own (e.g. distillation projections)
    that the optimizer trains beside the model's."""

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch of clean images, plus its named components; every random draw
        (timesteps, noise) comes from `generator`."""


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


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    ema_model: UNet


@dataclass
class Job:
    """One model for `fit_together`: what `fit` takes besides the data and the training config."""

    model: UNet
    diffusion: GaussianDiffusion
    objective: Objective
    recorder: Recorder | None = None
    micro_batch: int | None = None
    on_epoch_end: EpochCallback | None = None


def micro_batch_size(model, objective: Objective, batch: torch.Tensor, device, precision: str = "fp32") -> int:
    """One forward/backward pass before the long run, so a wrong shape or a non-finite loss fails in
    seconds. A batch that does not fit in the device's memory is halved until it does; `fit` then takes
    each batch in micro-batches of the size returned, with the same optimizer step (gradient accumulation)."""
    model.to(device)
    size = batch.shape[0]
    while (loss := _try_backward(model, objective, batch[:size].to(device), precision)) is None:
        if size == 1:
            raise DmatError(f"not even one image fits in {device} memory: use a smaller model or another device")
        size = (size + 1) // 2
    if not math.isfinite(loss):
        raise DmatError("the first batch already gives a non-finite loss: check the data and learning rate")
    return size


def _try_backward(model, objective: Objective, batch: torch.Tensor, precision: str) -> float | None:
    """The loss of one forward/backward pass, or None when it ran out of memory."""
    try:
        with autocast(batch.device, precision):
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


class _DropoutStream:
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


class _Mean:
    """Image-weighted means of named values over one pass of the data."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.images = 0

    def add(self, values: dict[str, float], images: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * images
        self.images += images


class _TrainingState:
    """What a run carries from epoch to epoch: the model, its EMA, the optimizer, its random streams, the best
    so far. Exactly this is `last.pt`'s `train_state`, so a resumed run continues unchanged."""

    def __init__(self, model: UNet, diffusion: GaussianDiffusion, objective: Objective, cfg: TrainConfig,
                 micro_batch: int, precision: str = "fp32", recorder: Recorder | None = None,
                 on_epoch_end: EpochCallback | None = None):
        self.model, self.diffusion, self.objective, self.cfg = model, diffusion, objective, cfg
        self.micro_batch, self.precision = micro_batch, precision
        self.recorder, self.on_epoch_end = recorder or Recorder(), on_epoch_end
        self.extras = list(getattr(objective, "trainable_parameters", list)())
        self.trainable = [*model.parameters(), *self.extras]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           foreach=True)  # CPU too: one kernel per tensor group, not per tensor
        self.ema = AveragedModel(model, multi_avg_fn=ema_average(cfg.ema_decay), use_buffers=True)
        device, seed = next(model.parameters()).device, cfg.seed + distributed.rank()
        self.noise = torch.Generator(device).manual_seed(seed + NOISE_SEED)
        self.dropout = _DropoutStream(seed, device)
        self.trainer: torch.nn.Module = model  # what computes the loss: the model, or DDP around it
        self.epoch, self.best_val, self.best_epoch, self.since_best = 0, math.inf, 0, 0
        self.best_weights: dict | None = None
        self.saved_epoch = 0  # the epoch last.pt holds
        self.latest: dict | None = None  # the newest finished epoch's resumable state
        self.stopped, self.error = False, None
        self.train_mean, self.val_mean, self.seconds = _Mean(), _Mean(), 0.0

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
        self.epoch = self.saved_epoch = resume["epoch"]
        self.best_weights = resume.get("best_model")
        self.best_val, self.best_epoch, self.since_best = state["best_val_loss"], state["best_epoch"], state["epochs_since_best"]
        if main:
            self.dropout.state = (state["torch_rng"], state.get("cuda_rng", self.dropout.state[1]))
            if "noise_rng" in state:  # a last.pt from before the noise had its own generator has none
                self.noise.set_state(state["noise_rng"])
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
        cpu_rng, cuda_rng = self.dropout.state
        train_state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "ema": self.ema.state_dict(), "best_val_loss": self.best_val, "best_epoch": self.best_epoch,
                       "epochs_since_best": self.since_best, "torch_rng": cpu_rng, "noise_rng": self.noise.get_state(),
                       "objective_parameters": [p.detach() for p in self.extras], "metrics": metrics,
                       **({"cuda_rng": cuda_rng} if cuda_rng is not None else {})}
        return copy.deepcopy(self.checkpoint(self.ema.module.state_dict(), metrics["val_loss"], train_state=train_state))

    def step(self, trainer, x0: torch.Tensor) -> dict[str, float]:
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
                    loss, parts = self.objective.loss(trainer, chunk, self.noise)
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

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.seconds = epoch, 0.0
        self.train_mean, self.val_mean = _Mean(), _Mean()
        self.model.train()

    def train_batch(self, x0: torch.Tensor) -> None:
        start = time.perf_counter()
        self.train_mean.add(self.step(self.trainer, x0), x0.shape[0])
        self.seconds += time.perf_counter() - start

    def train_metrics(self, shared_seconds: float, device) -> dict[str, float]:
        """Mean training loss components over all processes, and the epoch's time: this model's own steps
        plus its share of what the models of the loop shared (data, and anything done once per batch)."""
        totals = distributed.sum_over_processes({**self.train_mean.sums, "_images": self.train_mean.images}, device)
        images, seconds = totals.pop("_images"), self.seconds + shared_seconds
        return {**{f"train_{k}": v / images for k, v in totals.items()}, "epoch_seconds": seconds,
                "train_images_per_s": images / seconds}

    @torch.no_grad()
    def validate_batch(self, x0: torch.Tensor, generator: torch.Generator) -> None:
        """The EMA model's loss on a held-out batch. Always in fp32, whatever the training precision:
        validation losses are compared across models and runs, and pick the best epoch."""
        model = self.ema.module.eval()
        loss, parts = self.objective.loss(model, x0, generator)
        self.val_mean.add({"loss": loss.item(), **parts}, x0.shape[0])

    def val_metrics(self) -> dict[str, float]:
        return {f"val_{k}": v / self.val_mean.images for k, v in self.val_mean.sums.items()}

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """Keep a new best, ask `on_epoch_end`, decide on early stopping, save what is due, report the epoch."""
        if self.improved(metrics["val_loss"]):
            self.recorder.on_best(self.checkpoint(self.best_weights, self.best_val))
        pruned = self.on_epoch_end is not None and self.on_epoch_end(self.epoch, metrics)
        patience = self.cfg.early_stopping_patience
        self.stopped = bool(patience and self.since_best >= patience) or pruned
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

    def still_improving(self) -> bool:
        """Whether the model was still getting better when its epochs ran out: its best validation loss came in
        the last tenth of its epochs (the last epoch at least). A model early stopping stopped had converged."""
        return not self.stopped and self.best_epoch > self.epoch - max(1, self.epoch // 10)

    def finish(self) -> TrainResult:
        self.recorder.on_end({"best_val_loss": self.best_val, "best_epoch": self.best_epoch, "epochs_run": self.epoch,
                              "still_improving": float(self.still_improving())})
        if self.best_weights is not None:
            self.ema.module.load_state_dict(self.best_weights)
        return TrainResult(self.best_val, self.best_epoch, self.epoch, self.stopped, self.ema.module.eval())


class _Loop:
    """The models one loop trains. Each step goes to every model still training; in a loop of several
    (`isolate`), a model whose step fails drops out with its error and the others go on."""

    def __init__(self, states: list[_TrainingState], isolate: bool):
        self.states, self.isolate = states, isolate

    def running(self) -> list[_TrainingState]:
        return [s for s in self.states if s.error is None and not s.stopped]

    def each(self, action: Callable[[_TrainingState], None], states: list[_TrainingState] | None = None) -> None:
        for state in self.running() if states is None else states:
            try:
                action(state)
            except Exception as exc:
                if not self.isolate:
                    raise
                state.fail(exc)


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
    job = Job(model, diffusion, objective, recorder if main else None, micro_batch, on_epoch_end)
    state = _state(job, splits, cfg, device)
    if resume:
        state.recorder.on_resume(resume["epoch"], state.restore(resume, main))
    state.trainer = distributed.wrap(model, device)
    _train(_Loop([state], isolate=False), splits, cfg, device, main)
    return state.finish()


def fit_together(jobs: list[Job], splits: DataSplits, cfg: TrainConfig, device: torch.device,
                 before_batch: Callable[[], None] | None = None) -> list[TrainResult | Exception]:
    """Train several models in one pass over the same batches; per job, its result or the error that stopped it.

    Each model is trained exactly as `fit` trains it alone with the same config (its own optimizer, EMA,
    validation, early stopping, recorder and random streams), so the numbers are the same; what the loop
    shares is the data and whatever the objectives share between them, e.g. the frozen teacher's forward pass
    on the batch (`before_batch` is called before every training and validation batch, to forget the last
    one's). A model that stops early or fails drops out; Ctrl-C stops them all, each with its last epoch saved.
    One process only (under torchrun, train the models one by one).
    """
    if distributed.world_size() > 1:
        raise DmatError("several models in one loop is single-process only: under torchrun train them one by one")
    loop = _Loop([_state(job, splits, cfg, device) for job in jobs], isolate=True)
    _train(loop, splits, cfg, device, True, before_batch)
    results: dict[_TrainingState, TrainResult] = {}
    loop.each(lambda s: results.update({s: s.finish()}), [s for s in loop.states if s.error is None])
    return [results.get(s, s.error) for s in loop.states]


def _state(job: Job, splits: DataSplits, cfg: TrainConfig, device: torch.device) -> _TrainingState:
    """The training state of one job, its micro-batch checked on a first batch unless the job knows it."""
    job.model.to(device)
    precision = resolve_precision(cfg.precision, device)
    micro = job.micro_batch
    if micro is None:
        micro = micro_batch_size(job.model, job.objective, next(iter(_loaders(splits, cfg)[0])), device, precision)
    return _TrainingState(job.model, job.diffusion, job.objective, cfg, micro, precision, job.recorder,
                          job.on_epoch_end)


def _train(loop: _Loop, splits: DataSplits, cfg: TrainConfig, device: torch.device, main: bool,
           before_batch: Callable[[], None] | None = None) -> None:
    """Epochs until every model has stopped; on the way out (Ctrl-C, an error) each saves its last epoch."""
    train_loader, val_loader = _loaders(splits, cfg)
    progress = tqdm(range(loop.states[0].epoch + 1, cfg.epochs + 1), desc="epochs", unit="epoch",
                    dynamic_ncols=True, disable=not main)
    try:
        for epoch in progress:
            if not loop.running():
                break
            metrics = _train_epoch(loop, epoch, train_loader, device, main, before_batch)
            _validate(loop, metrics, val_loader, device, main, before_batch)
            if len(loop.running()) == 1:
                shown = metrics[loop.running()[0]]
                progress.set_postfix(train=f"{shown['train_loss']:.4f}", val=f"{shown['val_loss']:.4f}")
            loop.each(lambda s: s.end_epoch(metrics[s]))
    except BaseException:
        for state in loop.running():
            with contextlib.suppress(Exception):  # best effort: the error that stopped training is the one to report
                state.save_pending()
        raise
    finally:
        progress.close()  # ends its line, so a message that follows starts on its own


def _train_epoch(loop: _Loop, epoch: int, train_loader, device, main: bool,
                 before_batch: Callable[[], None] | None) -> dict[_TrainingState, dict[str, float]]:
    """One pass over the training data, every running model stepping on each batch in turn; the time
    nobody's step took (loading, `before_batch`) is split evenly between them."""
    loop.each(lambda s: s.begin_epoch(epoch))
    train_loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, unit="batch", dynamic_ncols=True,
                      disable=not main):
        x0 = batch.to(device)
        if before_batch is not None:
            before_batch()
        loop.each(lambda s: s.train_batch(x0))
    running = loop.running()
    shared = (time.perf_counter() - start - sum(s.seconds for s in running)) / max(len(running), 1)
    metrics: dict[_TrainingState, dict[str, float]] = {}
    loop.each(lambda s: metrics.update({s: s.train_metrics(shared, device)}), running)
    return metrics


def _validate(loop: _Loop, metrics: dict[_TrainingState, dict[str, float]], val_loader, device, main: bool,
              before_batch: Callable[[], None] | None) -> None:
    """Every running model's EMA on the held-out split (on the main process), with the same noise for every
    model and every epoch."""
    if main:
        generators = {id(s): torch.Generator(device=device).manual_seed(VALIDATION_SEED) for s in loop.running()}
        for batch in val_loader:
            x0 = batch.to(device)
            if before_batch is not None:
                before_batch()
            loop.each(lambda s: s.validate_batch(x0, generators[id(s)]))
    loop.each(lambda s: metrics[s].update(distributed.from_main(s.val_metrics() if main else None)))


def _loaders(splits: DataSplits, cfg: TrainConfig):
    """This process's shuffled shard of the training split, and the whole validation split in order."""
    train = loader(splits.train, distributed.per_process_batch(cfg.batch_size), shuffle=True,
                   sampler=distributed.train_sampler(splits.train, cfg.seed), num_workers=cfg.num_workers)
    return train, loader(splits.val, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
