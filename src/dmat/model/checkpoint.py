"""The checkpoint format: weights plus the configs that rebuild the model, so a checkpoint loads
from its own contents alone (never from guesses about the architecture).

Files here are local paths; storing them as a run's artifacts is `dmat.tracking`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dmat.errors import DmatError
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.unet import UNet, UNetConfig

FORMAT = "dmat-checkpoint-v1"
BEST, LAST = "best.pt", "last.pt"  # best EMA weights by validation loss; state to resume from


def model_checkpoint(model: UNet, diffusion: GaussianDiffusion, weights: dict, **extra) -> dict:
    """The self-describing checkpoint: weights plus everything needed to rebuild the model."""
    return {
        "format": FORMAT,
        "unet_config": model.config.to_dict(),
        "diffusion_config": diffusion.config.to_dict(),
        "model": weights,
        **extra,
    }


def save(payload: dict, path: Path) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a torn checkpoint."""
    partial = Path(path).with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load(path: str | Path, what: str) -> dict:
    """Load a dmat checkpoint with weights_only=True (no code runs); `what` names it in errors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file fails in many ways (zip reader, EOF, unpickler)
        first = (str(exc).splitlines() or [""])[0][:120]
        reason = "it is empty" if os.path.getsize(path) == 0 else f"{type(exc).__name__}: {first}"
        raise DmatError(f"{what} is truncated or corrupt ({reason}): it cannot be loaded; train the model again "
                        "or put back an intact copy") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DmatError(f"{what} is not a dmat checkpoint")
    return ckpt


def build(ckpt: dict) -> tuple[UNet, GaussianDiffusion]:
    """The model and noise process a checkpoint describes, with its weights loaded."""
    model = UNet(UNetConfig.from_dict(ckpt["unet_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DmatError(f"checkpoint weights do not match the config saved with them ({first})") from None
    return model, GaussianDiffusion(DiffusionConfig(**ckpt["diffusion_config"]))


def same_architecture(ckpt: dict, model: UNet, diffusion: GaussianDiffusion) -> bool:
    """Whether a checkpoint was written for this architecture and noise schedule."""
    return (UNetConfig.from_dict(ckpt["unet_config"]) == model.config
            and DiffusionConfig(**ckpt["diffusion_config"]) == diffusion.config)
