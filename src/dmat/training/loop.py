"""The one training loop, shared by the teacher and every student.

What is trained is decided by a `TrainingLoss` (the DDPM loss for the teacher, distillation losses
for a student); the loop owns everything else: device, smoke check (and micro-batches when a batch
does not fit in memory), the learning rate of each step, EMA weights, validation on the held-out split with
fixed noise, best model by validation loss, early stopping (patience, convergence), checkpoints, the progress.
Where metrics and checkpoints go is a `Recorder`'s business (MLflow in a real run, nothing in a test): this
module knows no tracking at all.

`fit` trains one model; `fit_together` trains several in one pass over the same batches (students of
one teacher, whose frozen forward pass they can then share). All randomness a model's training draws
is its own: the timesteps and noise from a generator seeded with `seed`, dropout from its own stream
of torch's global generator, the data order from the sampler's seed. So a model trained with others
gets exactly the numbers it gets alone, and a resumed run (both streams are in `last.pt`) continues
unchanged. One model's state (optimizer step, best so far, epoch totals) is `dmat.training.state`'s.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from dmat import distributed
from dmat.config import TrainConfig
from dmat.data import DataSplits, loader
from dmat.errors import DmatError
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.runtime import resolve_precision
from dmat.training.autotune import compiled
from dmat.training.losses import DiffusionLoss, TrainingLoss
from dmat.training.recorder import Recorder
from dmat.training.state import EpochCallback, TrainingState, TrainResult
from dmat.training.step import ema_average, micro_batch_size

__all__ = ["DiffusionLoss", "EpochCallback", "Job", "TrainResult", "TrainingLoss", "TrainingState", "ema_average", "fit",
           "fit_together", "micro_batch_size"]

VALIDATION_SEED = 1234  # the same noise and timesteps for every epoch's validation


@dataclass
class Job:
    """One model for `fit_together`: what `fit` takes besides the data and the training config."""

    model: UNet
    diffusion: GaussianDiffusion
    criterion: TrainingLoss
    recorder: Recorder | None = None
    micro_batch: int | None = None
    on_epoch_end: EpochCallback | None = None
    resume: dict | None = None  # the last.pt (and `best_model`) of an interrupted run it continues: see fit


class _Loop:
    """The models one loop trains. Each step goes to every model still training; in a loop of several
    (`isolate`), a model whose step fails drops out with its error and the others go on."""

    def __init__(self, states: list[TrainingState], isolate: bool):
        self.states, self.isolate = states, isolate

    def running(self) -> list[TrainingState]:
        return [s for s in self.states if s.error is None and not s.stopped]

    def each(self, action: Callable[[TrainingState], None], states: list[TrainingState] | None = None) -> None:
        for state in self.running() if states is None else states:
            try:
                action(state)
            except Exception as exc:
                if not self.isolate:
                    raise
                state.fail(exc)


def fit(model: UNet, diffusion: GaussianDiffusion, criterion: TrainingLoss, splits: DataSplits, cfg: TrainConfig,
        device: torch.device, recorder: Recorder | None = None, resume: dict | None = None,
        on_epoch_end: EpochCallback | None = None, micro_batch: int | None = None) -> TrainResult:
    """Train `model` under `criterion`; returns the best EMA model by validation loss (kept in memory).

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
    job = Job(model, diffusion, criterion, recorder if main else None, micro_batch, on_epoch_end, resume)
    state = _state(job, splits, cfg, device, main)
    state.trainer = compiled(distributed.wrap(model, device), cfg.compile)  # compiled if --compile on/measured so
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
    Jobs resumed at different epochs see different batches: each epoch they resume at is a loop of its own, in
    turn. One process only (under torchrun, train the models one by one).
    """
    if distributed.world_size() > 1:
        raise DmatError("several models in one loop is single-process only: under torchrun train them one by one")
    states = [_state(job, splits, cfg, device, True) for job in jobs]
    by_start: dict[int, list[TrainingState]] = {}
    for state in states:
        by_start.setdefault(state.epoch, []).append(state)
    for start in sorted(by_start):
        _train(_Loop(by_start[start], isolate=True), splits, cfg, device, True, before_batch)
    results: dict[TrainingState, TrainResult] = {}
    _Loop(states, isolate=True).each(lambda s: results.update({s: s.finish()}), [s for s in states if s.error is None])
    return [results.get(s, s.error) for s in states]


def _state(job: Job, splits: DataSplits, cfg: TrainConfig, device: torch.device, main: bool) -> TrainingState:
    """The training state of one job, its micro-batch checked on a first batch unless the job knows it, restored
    from the job's `resume` checkpoint if it has one."""
    job.model.to(device)
    precision = resolve_precision(cfg.precision, device)
    train_loader, micro = _loaders(splits, cfg)[0], job.micro_batch
    if micro is None:
        micro = micro_batch_size(job.model, job.criterion, next(iter(train_loader)), device, precision)
    state = TrainingState(job.model, job.diffusion, job.criterion, cfg, micro, precision, job.recorder,
                          job.on_epoch_end, steps_per_epoch=len(train_loader))
    if job.resume:
        state.recorder.on_resume(job.resume["epoch"], state.restore(job.resume, main))
    return state


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
                 before_batch: Callable[[], None] | None) -> dict[TrainingState, dict[str, float]]:
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
    shared = (time.perf_counter() - start - sum(s.totals.seconds for s in running)) / max(len(running), 1)
    metrics: dict[TrainingState, dict[str, float]] = {}
    loop.each(lambda s: metrics.update({s: s.train_metrics(shared, device)}), running)
    return metrics


def _validate(loop: _Loop, metrics: dict[TrainingState, dict[str, float]], val_loader, device, main: bool,
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
