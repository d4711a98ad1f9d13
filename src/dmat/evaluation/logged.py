"""How an evaluation logs what is not a single number: metric series, arrays and image grids, to the active run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torchvision.utils import save_image

DENOISING_IMAGES, DENOISING_STEPS = 8, 8


def log_history(name: str, values: dict[int, float]) -> None:
    """A metric series in as few calls as the store allows (log_batch takes 1000 values at a time)."""
    run_id, now = mlflow.active_run().info.run_id, int(time.time() * 1000)
    items = [Metric(name, float(v), now, int(step)) for step, v in values.items()]
    for i in range(0, len(items), 1000):
        MlflowClient().log_batch(run_id, metrics=items[i : i + 1000])


def log_npz(path: str, **arrays) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / Path(path).name
        np.savez_compressed(file, **arrays)
        mlflow.log_artifact(str(file), artifact_path=str(Path(path).parent))


def log_grid(path: str, images: torch.Tensor, nrow: int) -> None:
    """Images in [-1, 1] as one PNG grid artifact, `nrow` to a row."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / Path(path).name
        save_image(((images + 1) / 2).clamp(0, 1), file, nrow=nrow)
        mlflow.log_artifact(str(file), artifact_path=str(Path(path).parent))


def log_denoising(states: torch.Tensor, timesteps) -> None:
    """About 8 evenly spaced states [n, steps, C, H, W] of the first few shared-noise trajectories, as arrays and
    a grid."""
    shown = torch.linspace(0, states.shape[1] - 1, DENOISING_STEPS).round().long().unique()
    states = states[:DENOISING_IMAGES, shown]
    log_npz("denoising/states.npz", states=states.numpy().astype(np.float16),
            timesteps=np.array(timesteps)[shown.numpy()])
    log_grid("denoising/grid.png", states.flatten(0, 1), nrow=len(shown))
