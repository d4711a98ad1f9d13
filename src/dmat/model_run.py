"""Train one model, teacher or student, as one MLflow run: the entry point both share.

The sequence is the same for every model: validate, choose the device, check the tracking store,
let the caller plan the model (a student loads its teacher here), load the data, seed, build the
network, check a resumed run's checkpoint, run one batch forward and backward (halving it until it
fits in memory); only then is the MLflow run created, so bad input never leaves a run behind.
`training.fit` trains with an `MlflowRecorder`; the sample grid ends the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from dmat import distributed, lineage, notes, registry, tracking
from dmat.config import TrainConfig, flat_params
from dmat.data import DataSplits, load_splits
from dmat.diffusion import DiffusionConfig, GaussianDiffusion, sample_from_seed
from dmat.measure import flops_per_forward
from dmat.resume import checkpoint_to_resume, resume_command
from dmat.runtime import resolve_device, seed_everything
from dmat.training import EpochCallback, Objective, fit, micro_batch_size
from dmat.unet import UNet, UNetConfig

log = logging.getLogger(__name__)


@dataclass
class ModelPlan:
    """What one training run trains: the role-specific half of `train_model`."""

    role: str
    run_name: str
    unet: UNetConfig
    diffusion: GaussianDiffusion
    objective: Callable[[UNet], Objective]  # built once the network exists (a student's projections need it)
    tags: dict[str, str]
    params: dict[str, object]
    initial_weights: Callable[[UNet], dict] | None = None  # default: the seeded random init (e.g. pruned teacher)


def model_params(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, object]:
    """One flat namespace of params, the same names as the CLI options and MLproject parameters."""
    unet_fields = {k: v for k, v in flat_params("", unet).items() if k != "image_size"}
    return {**flat_params("", train), "image_size": unet.image_size, **unet_fields, **flat_params("", diffusion)}


def train_model(train: TrainConfig, plan: Callable[[torch.device], ModelPlan], experiment: str | None = None,
                resume: str | None = None, on_epoch_end: EpochCallback | None = None) -> str | None:
    """Train the model `plan(device)` describes as its own MLflow run; returns the run id (None on ranks > 0).

    `resume` continues that KILLED or FAILED run from its last.pt, in the same MLflow run. An error or
    interruption once the run exists carries a note (`__notes__`) saying the run's status and how to
    resume it.
    """
    ready = _prepare(train, plan, experiment, resume)
    spec, train = ready.spec, ready.train
    fit_args = (ready.model, spec.diffusion, ready.objective, ready.splits, train, ready.device)
    if not distributed.is_main():  # under torchrun, rank 0 alone logs to MLflow
        fit(*fit_args, resume=ready.checkpoint, on_epoch_end=on_epoch_end, micro_batch=ready.micro_batch)
        return None
    tags = {tracking.ROLE: spec.role, tracking.DATASET: train.dataset, tracking.IMAGE_SIZE: str(spec.unet.image_size),
            tracking.SIZE_FACTOR: str(spec.unet.size_factor), **spec.tags}
    start_epoch = ready.checkpoint["epoch"] if ready.checkpoint else 0
    recorder, run_id = tracking.MlflowRecorder(saved_epoch=start_epoch), None
    try:
        with tracking.tracked_run(spec.run_name, tags, experiment, run_id=resume) as run:
            run_id = run.info.run_id
            tracking.log_params(spec.params)
            if not resume:
                mlflow.log_metrics(start_metrics(ready.model, ready.splits))
                lineage.log_training_data(train, ready.splits)  # the run's dataset inputs
            notes.describe(run_id)  # the run's description in the MLflow UI
            mlflow.log_metric("micro_batch_size", ready.micro_batch, step=start_epoch)
            result = fit(*fit_args, recorder, resume=ready.checkpoint, on_epoch_end=on_epoch_end,
                         micro_batch=ready.micro_batch)
            log_sample_grid(result.ema_model, spec.diffusion, train, ready.device)
            # the pyfunc MLflow Model, registered; served with the student's own steps by default
            registry.publish(run_id, train.sampler, int(spec.params.get("student_steps", train.sample_steps)))
            return run_id
    except BaseException as exc:
        if run_id:
            _note(exc, how_to_resume(run_id, spec.role, recorder.saved_epoch, isinstance(exc, KeyboardInterrupt)))
        raise


@dataclass
class _Ready:
    """Everything checked and built before the run is created."""

    train: TrainConfig
    device: torch.device
    spec: ModelPlan
    splits: DataSplits
    model: UNet
    objective: Objective
    checkpoint: dict | None
    micro_batch: int


def _prepare(train: TrainConfig, plan: Callable[[torch.device], ModelPlan], experiment: str | None,
             resume: str | None) -> _Ready:
    """Validate, choose the device, check the store, plan, load the data, seed, build, check a resume and
    run one batch forward and backward: bad input fails here, before any run exists."""
    train.validate()
    device = resolve_device(train.device)
    tracking.check_writable(experiment, run_id=resume)
    spec = plan(device)
    train = _sample_steps_within_timesteps(train, spec)
    splits = load_splits(train)
    seed_everything(train.seed)  # the seed fixes the initial weights too
    model = UNet(spec.unet)
    if spec.initial_weights is not None:
        model.load_state_dict(spec.initial_weights(model))
    objective = spec.objective(model)
    checkpoint = checkpoint_to_resume(resume, spec.role, model, spec.diffusion) if resume else None
    batch = distributed.per_process_batch(train.batch_size)  # an uneven split fails before the run exists
    distributed.setup(device)
    first = torch.stack([splits.train[i] for i in range(min(batch, len(splits.train)))])
    micro = distributed.min_over_processes(micro_batch_size(model, objective, first, device), device)
    if micro < batch:
        log.warning(f"note: a batch of {batch} does not fit in {device} memory: each batch is taken in "
                    f"{math.ceil(batch / micro)} micro-batches of up to {micro} (gradient accumulation: the same "
                    "optimizer step as the whole batch); logged as micro_batch_size")
    return _Ready(train, device, spec, splits, model, objective, checkpoint, micro)


def _sample_steps_within_timesteps(train: TrainConfig, spec: ModelPlan) -> TrainConfig:
    """The sample grid cannot take more steps than the model has timesteps: say so, and log the steps used."""
    timesteps = spec.diffusion.timesteps
    if train.sample_steps <= timesteps:
        return train
    log.warning(f"note: sample-steps {train.sample_steps} is more than the {timesteps} timesteps: the sample grid "
                f"takes {timesteps} steps (logged as resolved.sample_steps)")
    spec.params = {**spec.params, "resolved.sample_steps": timesteps}
    return dataclasses.replace(train, sample_steps=timesteps)


def how_to_resume(run_id: str, role: str, saved_epoch: int, interrupted: bool) -> str:
    """What became of a run that stopped early, and the command that continues it."""
    status = "KILLED" if interrupted else "FAILED"
    if saved_epoch < 1:
        return f"run {run_id} is {status} before its first epoch finished, so there is nothing to resume: start it again"
    return (f"run {run_id} is {status} with checkpoints/last.pt at epoch {saved_epoch}: "
            f"resume with `{resume_command(role, run_id)}`")


def _note(exc: BaseException, text: str) -> None:
    """`BaseException.add_note` (Python 3.11+), spelled so that 3.10 keeps the note too."""
    exc.__notes__ = [*getattr(exc, "__notes__", []), text]


def start_metrics(model: UNet, splits: DataSplits) -> dict[str, float]:
    """What a run knows before training: its model's size and cost, and its data's size."""
    return {"num_parameters": model.num_parameters, "flops_per_forward": flops_per_forward(model),
            "train_images": len(splits.train), "val_images": len(splits.val)}


def log_sample_grid(model: UNet, diffusion: GaussianDiffusion, cfg: TrainConfig, device) -> None:
    """Sample a grid from fixed noise with the run's own sampler settings and log it as a PNG."""
    c = model.config
    images = sample_from_seed(model.eval(), diffusion, cfg.num_sample_images, cfg.sampler, cfg.sample_steps, cfg.seed,
                              device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.png"
        zoom = max(1, 64 // c.image_size)  # small images (16 px digits) are enlarged to be seen in the UI
        images = F.interpolate(images, scale_factor=zoom, mode="nearest") if zoom > 1 else images
        save_image((images + 1) / 2, path, nrow=int(math.sqrt(cfg.num_sample_images)) or 1)
        mlflow.log_artifact(str(path), artifact_path="samples")
