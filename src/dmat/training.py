"""The one training loop, shared by the teacher and every student.

What is trained is decided by an `Objective` (the DDPM loss for the teacher, distillation losses
for a student); the loop owns everything else: device, smoke check, EMA weights, validation on the
held-out split with fixed noise, best model by validation loss, early stopping, checkpoints, the
sample grid, progress and per-epoch metrics in MLflow.
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import mlflow
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import save_image
from tqdm.auto import tqdm

from dmat import distributed, tracking
from dmat.config import TrainConfig
from dmat.data import DataSplits, loader
from dmat.diffusion import GaussianDiffusion, sample
from dmat.errors import DmatError
from dmat.resume import checkpoint_to_resume
from dmat.evaluation.cost import flops_per_forward
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


def resolve_device(name: str) -> torch.device:
    """CUDA > MPS > CPU when `name` is "auto"; otherwise exactly the device asked for."""
    if name == "auto":
        if torch.cuda.is_available():
            return distributed.local_device(torch.device("cuda"))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmatError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmatError("device cuda was asked for but CUDA is not available: use --device cpu or auto")
    return distributed.local_device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def ema_average(decay: float):
    """EMA with the usual warm-up (decay grows as (1+n)/(10+n)) so early epochs are not stuck at init."""

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


def smoke_check(model, objective: Objective, batch: torch.Tensor, device) -> None:
    """One forward/backward pass before the long run, so a wrong shape or OOM fails in seconds."""
    try:
        loss, _ = objective.loss(model, batch.to(device))
        loss.backward()
    except torch.OutOfMemoryError:
        raise DmatError(f"one batch of {batch.shape[0]} does not fit in {device} memory: lower --batch-size") from None
    model.zero_grad(set_to_none=True)
    if not math.isfinite(loss.item()):
        raise DmatError("the first batch already gives a non-finite loss: check the data and learning rate")


def fit(model: UNet, diffusion: GaussianDiffusion, objective: Objective, splits: DataSplits, cfg: TrainConfig,
        device: torch.device, checkpoint_extra: dict | None = None, resume: dict | None = None,
        on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train `model` under `objective`, logging to the active MLflow run (rank 0 alone under torchrun).

    `on_epoch_end(epoch, metrics)` returning True stops training after that epoch (e.g. an Optuna pruner).

    `resume` is the `last.pt` of an interrupted run: training continues after its epoch. If the run is
    interrupted (Ctrl-C, a non-finite loss, any error), the state after the last finished epoch is
    saved as `last.pt` first, so a resume repeats no logged epoch and skips none.
    """
    main = distributed.is_main()
    seed_everything(cfg.seed + distributed.rank())
    model.to(device)
    sampler = distributed.train_sampler(splits.train, cfg.seed)
    train_loader = loader(splits.train, distributed.per_process_batch(cfg.batch_size), shuffle=True, sampler=sampler,
                          num_workers=cfg.num_workers)
    val_loader = loader(splits.val, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    smoke_check(model, objective, next(iter(train_loader)), device)

    extras = list(getattr(objective, "trainable_parameters", list)())
    trainable = [*model.parameters(), *extras]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = AveragedModel(model, avg_fn=ema_average(cfg.ema_decay), use_buffers=True)
    extra = checkpoint_extra or {}
    best_val, best_epoch, since_best, epoch = math.inf, 0, 0, 0
    if resume:
        epoch, state = resume["epoch"], resume["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        with torch.no_grad():
            for param, saved in zip(extras, state["objective_parameters"]):
                param.copy_(saved)
        best_val, best_epoch, since_best = state["best_val_loss"], state["best_epoch"], state["epochs_since_best"]
        if main:
            torch.set_rng_state(state["torch_rng"])
            _log_if_missing(state["metrics"], epoch)
    trainer = distributed.wrap(model, device)
    saved_epoch, snapshot, stop = epoch, None, False
    progress = tqdm(range(epoch + 1, cfg.epochs + 1), desc="epochs", unit="epoch", dynamic_ncols=True, disable=not main)
    try:
        for epoch in progress:
            model.train()
            sampler.set_epoch(epoch)
            start, sums, n = time.perf_counter(), {}, 0
            for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, unit="batch", dynamic_ncols=True,
                              disable=not main):
                x0 = batch.to(device)
                loss, parts = objective.loss(trainer, x0)
                if not distributed.all_finite(loss):
                    raise DmatError(f"loss became non-finite at epoch {epoch}: lower --lr; checkpoints/last.pt "
                                    f"keeps the last good epoch ({epoch - 1}) for --resume")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(extras)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                ema.update_parameters(model)
                for key, value in {"loss": loss.item(), **parts}.items():
                    sums[key] = sums.get(key, 0.0) + value * x0.shape[0]
                n += x0.shape[0]
            seconds = time.perf_counter() - start
            totals = distributed.sum_over_processes({**sums, "_images": n}, device)
            n = totals.pop("_images")
            metrics = {f"train_{k}": v / n for k, v in totals.items()}
            metrics.update(distributed.from_main(validate(ema.module, objective, val_loader, device) if main else None))
            metrics.update(epoch_seconds=seconds, train_images_per_s=n / seconds)
            progress.set_postfix(train=f"{metrics['train_loss']:.4f}", val=f"{metrics['val_loss']:.4f}")

            if metrics["val_loss"] < best_val:
                best_val, best_epoch, since_best = metrics["val_loss"], epoch, 0
                if main:
                    tracking.save_checkpoint(
                        tracking.model_checkpoint(model, diffusion, ema.module.state_dict(), epoch=epoch,
                                                  val_loss=best_val, **extra), tracking.BEST)
            else:
                since_best += 1
            stop = bool(cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience)
            if on_epoch_end is not None and on_epoch_end(epoch, metrics):
                stop = True
            if main:
                snapshot = copy.deepcopy(tracking.model_checkpoint(
                    model, diffusion, ema.module.state_dict(), epoch=epoch, val_loss=metrics["val_loss"], **extra,
                    train_state={"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "ema": ema.state_dict(), "best_val_loss": best_val, "best_epoch": best_epoch,
                                 "epochs_since_best": since_best, "torch_rng": torch.get_rng_state(),
                                 "objective_parameters": [p.detach() for p in extras], "metrics": metrics}))
                if epoch % cfg.save_interval == 0 or stop or epoch == cfg.epochs:
                    tracking.save_checkpoint(snapshot, tracking.LAST)
                    saved_epoch = epoch
                mlflow.log_metrics(metrics, step=epoch)
            if stop:
                break
    except BaseException:
        if snapshot is not None and snapshot["epoch"] > saved_epoch:
            tracking.save_checkpoint(snapshot, tracking.LAST)
        raise
    progress.close()
    if not main:
        return TrainResult(best_val, best_epoch, epoch, stop, ema.module.eval())
    mlflow.log_metrics({"best_val_loss": best_val, "best_epoch": best_epoch, "epochs_run": epoch})
    ckpt = tracking.load_checkpoint(mlflow.active_run().info.run_id, tracking.BEST)
    ema.module.load_state_dict(ckpt["model"])
    return TrainResult(best_val, best_epoch, epoch, stop, ema.module.eval())


def _log_if_missing(metrics: dict[str, float], epoch: int) -> None:
    """A run killed between saving last.pt and logging that epoch's metrics gets them logged on resume."""
    history = MlflowClient().get_metric_history(mlflow.active_run().info.run_id, "val_loss")
    if all(m.step != epoch for m in history):
        mlflow.log_metrics(metrics, step=epoch)


def log_sample_grid(model: UNet, diffusion: GaussianDiffusion, cfg: TrainConfig, device) -> None:
    """Sample a grid from fixed noise with the model's own sampler settings and log it as a PNG."""
    c = model.config
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    noise = torch.randn((cfg.num_sample_images, c.in_channels, c.image_size, c.image_size), generator=generator,
                        device=device)
    steps = min(cfg.sample_steps, diffusion.timesteps)  # a model with T < sample_steps samples all T steps
    images = sample(model.eval(), diffusion, noise, cfg.sampler, steps, generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.png"
        zoom = max(1, 64 // c.image_size)  # small images (16 px digits) are enlarged to be seen in the UI
        images = F.interpolate(images, scale_factor=zoom, mode="nearest") if zoom > 1 else images
        save_image((images + 1) / 2, path, nrow=int(math.sqrt(cfg.num_sample_images)) or 1)
        mlflow.log_artifact(str(path), artifact_path="samples")


def run_training(role: str, run_name: str, tags: dict[str, str], params: dict[str, object], model: UNet,
                 diffusion: GaussianDiffusion, objective: Objective, splits: DataSplits, cfg: TrainConfig,
                 device: torch.device, checkpoint_extra: dict | None = None, experiment: str | None = None,
                 resume: str | None = None, on_epoch_end: EpochCallback | None = None) -> str | None:
    """Train one model as its own MLflow run (teacher or student); returns the run id (None on ranks > 0).

    `resume` continues that KILLED or FAILED run from its last.pt, in the same MLflow run.
    """
    checkpoint = checkpoint_to_resume(resume, role, model, diffusion) if resume else None
    distributed.per_process_batch(cfg.batch_size)  # an uneven split fails before the run exists
    distributed.setup(device)
    if not distributed.is_main():  # under torchrun, rank 0 alone logs to MLflow
        fit(model, diffusion, objective, splits, cfg, device, checkpoint_extra, checkpoint, on_epoch_end)
        return None
    c = model.config
    all_tags = {tracking.ROLE: role, tracking.DATASET: cfg.dataset, tracking.IMAGE_SIZE: str(c.image_size),
                tracking.SIZE_FACTOR: str(c.size_factor), **tags}
    with tracking.tracked_run(run_name, all_tags, experiment, run_id=resume) as run:
        tracking.log_params(params)
        if not resume:
            mlflow.log_metrics({"num_parameters": model.num_parameters, "flops_per_forward": flops_per_forward(model),
                                "train_images": len(splits.train), "val_images": len(splits.val)})
        result = fit(model, diffusion, objective, splits, cfg, device, checkpoint_extra, checkpoint, on_epoch_end)
        log_sample_grid(result.ema_model, diffusion, cfg, device)
        return run.info.run_id
