"""Teacher training: the full-width UNet (size_factor 1.0) trained on data with the DDPM loss."""

from __future__ import annotations

from dmat import tracking
from dmat.config import TrainConfig, flat_params, replace
from dmat.data import load_splits
from dmat.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.training import DiffusionObjective, resolve_device, run_training, seed_everything
from dmat.unet import UNet, UNetConfig


def model_params(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, object]:
    """One flat namespace of params, the same names as the CLI options and MLproject parameters."""
    unet_fields = {k: v for k, v in flat_params("", unet).items() if k != "image_size"}
    return {**flat_params("", train), "image_size": unet.image_size, **unet_fields, **flat_params("", diffusion)}


def train_teacher(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig, experiment: str | None = None,
                  resume: str | None = None) -> str | None:
    """Train a teacher as its own MLflow run and return the run id (None on ranks > 0 under torchrun).

    `resume` continues that KILLED or FAILED teacher run instead (see dmat.resume).

    `unet` gives the architecture; its image size and channels are set from the data set here.
    Everything is validated (config, device, tracking store, data) before the run is created.
    """
    train.validate()
    unet = replace(unet, image_size=train.resolved_image_size(), in_channels=train.channels, size_factor=1.0)
    unet.validate()
    diffusion.validate()
    device = resolve_device(train.device)
    tracking.check_tracking_reachable()
    splits = load_splits(train)
    seed_everything(train.seed)  # the seed fixes the initial weights too
    model = UNet(unet)
    process = GaussianDiffusion(diffusion)
    return run_training(
        role="teacher",
        run_name=f"teacher-{train.dataset}-{unet.image_size}px",
        tags={tracking.METHOD: "teacher"},
        params=model_params(train, unet, diffusion),
        model=model,
        diffusion=process,
        objective=DiffusionObjective(process),
        splits=splits,
        cfg=train,
        device=device,
        experiment=experiment,
        resume=resume,
    )
