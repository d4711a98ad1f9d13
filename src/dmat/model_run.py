"""Train one model, teacher or student, as one MLflow run: the entry point both share.

The sequence is the same for every model: validate, choose the device, check the tracking store,
let the caller plan the model (a student loads its teacher here), load the data, seed, build the
network, check a resumed run's checkpoint; only then is the MLflow run created, so bad input never
leaves a run behind. `training.fit` trains with an `MlflowRecorder`; the sample grid ends the run.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from dmat import distributed, tracking
from dmat.config import TrainConfig, flat_params
from dmat.data import DataSplits, load_splits
from dmat.diffusion import DiffusionConfig, GaussianDiffusion, sample
from dmat.measure import flops_per_forward
from dmat.resume import checkpoint_to_resume
from dmat.runtime import resolve_device, seed_everything
from dmat.training import EpochCallback, Objective, fit
from dmat.unet import UNet, UNetConfig


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


def model_params(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, object]:
    """One flat namespace of params, the same names as the CLI options and MLproject parameters."""
    unet_fields = {k: v for k, v in flat_params("", unet).items() if k != "image_size"}
    return {**flat_params("", train), "image_size": unet.image_size, **unet_fields, **flat_params("", diffusion)}


def train_model(train: TrainConfig, plan: Callable[[torch.device], ModelPlan], experiment: str | None = None,
                resume: str | None = None, on_epoch_end: EpochCallback | None = None) -> str | None:
    """Train the model `plan(device)` describes as its own MLflow run; returns the run id (None on ranks > 0).

    `resume` continues that KILLED or FAILED run from its last.pt, in the same MLflow run.
    """
    train.validate()
    device = resolve_device(train.device)
    tracking.check_tracking_reachable()
    spec = plan(device)
    splits = load_splits(train)
    seed_everything(train.seed)  # the seed fixes the initial weights too
    model = UNet(spec.unet)
    objective = spec.objective(model)
    checkpoint = checkpoint_to_resume(resume, spec.role, model, spec.diffusion) if resume else None
    distributed.per_process_batch(train.batch_size)  # an uneven split fails before the run exists
    distributed.setup(device)
    if not distributed.is_main():  # under torchrun, rank 0 alone logs to MLflow
        fit(model, spec.diffusion, objective, splits, train, device, resume=checkpoint, on_epoch_end=on_epoch_end)
        return None
    tags = {tracking.ROLE: spec.role, tracking.DATASET: train.dataset, tracking.IMAGE_SIZE: str(spec.unet.image_size),
            tracking.SIZE_FACTOR: str(spec.unet.size_factor), **spec.tags}
    with tracking.tracked_run(spec.run_name, tags, experiment, run_id=resume) as run:
        tracking.log_params(spec.params)
        if not resume:
            mlflow.log_metrics(start_metrics(model, splits))
        result = fit(model, spec.diffusion, objective, splits, train, device, tracking.MlflowRecorder(),
                     resume=checkpoint, on_epoch_end=on_epoch_end)
        log_sample_grid(result.ema_model, spec.diffusion, train, device)
        return run.info.run_id


def start_metrics(model: UNet, splits: DataSplits) -> dict[str, float]:
    """What a run knows before training: its model's size and cost, and its data's size."""
    return {"num_parameters": model.num_parameters, "flops_per_forward": flops_per_forward(model),
            "train_images": len(splits.train), "val_images": len(splits.val)}


def log_sample_grid(model: UNet, diffusion: GaussianDiffusion, cfg: TrainConfig, device) -> None:
    """Sample a grid from fixed noise with the run's own sampler settings and log it as a PNG."""
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
