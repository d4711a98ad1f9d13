"""Teacher training: the full-width UNet (size_factor 1.0) trained on data with the DDPM loss."""

from __future__ import annotations

from dmat import tracking
from dmat.config import TrainConfig, with_overrides
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.unet import UNetConfig
from dmat.stages.model_run import ModelPlan, model_params, train_model
from dmat.training.loop import DiffusionLoss


def train_teacher(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig, experiment: str | None = None,
                  resume: str | None = None) -> str | None:
    """Train a teacher as its own MLflow run and return the run id (None on ranks > 0 under torchrun).

    `resume` continues that KILLED or FAILED teacher run instead (see dmat.stages.resume).

    `unet` gives the architecture; its image size and channels are set from the data set here.
    Everything is validated (config, device, tracking store, data) before the run is created.
    """
    train.validate()
    unet = with_overrides(unet, image_size=train.resolved_image_size(), in_channels=train.channels, size_factor=1.0).validate()
    process = GaussianDiffusion(diffusion.validate())
    plan = ModelPlan(
        role=tracking.TEACHER,
        run_name=f"teacher-{train.dataset}-{unet.image_size}px",
        unet=unet,
        diffusion=process,
        criterion=lambda model: DiffusionLoss(process, train.snr_gamma),
        tags={tracking.METHOD: "teacher"},
        params=model_params(train, unet, diffusion),
    )
    return train_model(train, lambda device: plan, experiment, resume)
