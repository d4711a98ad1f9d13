"""How an evaluation logs what is not a single number (metric series, arrays and image grids, to the active run), and
the headline scores it copies onto the model's own run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from torchvision.utils import save_image

from dmat import tracking
from dmat.config.metrics import SPACES

DENOISING_IMAGES, DENOISING_STEPS = 8, 8
# An evaluation's headline scores, copied onto the model run it evaluates as `eval_<name>` (on_model_run)
ON_MODEL_RUN = ("kid", "kid_sd", "fid", "fid_sd", *(f"{m}_{space}" for space in SPACES[1:] for m in ("kid", "fid")),
                "precision", "recall", "latency_ms_per_image")
ON_MODEL_PREFIX = "eval_"
MODEL_OWN = ("num_parameters", "flops_per_forward")  # a model run logs these itself (an older one may not have)


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


def on_model_run(model_run_id: str, evaluation_run_id: str) -> dict[str, float]:
    """Copy an evaluation's headline scores onto the model's own run as `eval_kid`, `eval_fid`, ... (ON_MODEL_RUN
    present), with its num_parameters and flops_per_forward where the model run lacks them, and tag the model run
    with the evaluation (dmat.evaluation_run_id); returns what was logged. So the MLflow UI's runs view, filtered to
    tags.`dmat.role` IN ('teacher', 'student'), holds one row per model with size and quality side by side, and
    its chart view plots eval_fid against num_parameters. A model evaluated again shows its newest evaluation's
    scores (the tag says which); the evaluation run keeps them all under their plain names."""
    client = MlflowClient()
    scores, model = client.get_run(evaluation_run_id).data.metrics, client.get_run(model_run_id).data.metrics
    copied = {ON_MODEL_PREFIX + name: scores[name] for name in ON_MODEL_RUN if name in scores}
    copied |= {name: scores[name] for name in MODEL_OWN if name in scores and name not in model}
    now = int(time.time() * 1000)
    client.log_batch(model_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in copied.items()],
                     tags=[RunTag(tracking.EVALUATION_RUN_ID, evaluation_run_id)])
    return copied
