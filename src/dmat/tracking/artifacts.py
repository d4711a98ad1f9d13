"""Checkpoints as run artifacts, and a model rebuilt from its run id alone."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmat import runtime
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.tracking.search import require_role
from dmat.tracking.store import _first_line, get_run
from dmat.tracking.vocabulary import CHECKPOINT_DIR, MODEL_ROLES, ROLE


def save_checkpoint(payload: dict, name: str, run_id: str | None = None) -> None:
    """Write a checkpoint atomically and log it under checkpoints/ of the active run (or `run_id`). A stop
    signal waits until it is stored (never half a file); a full disk or a read-only artifact folder is one
    clear error."""
    with runtime.hold_signals(), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        try:
            checkpoint.save(payload, path)
            mlflow.log_artifact(str(path), artifact_path=CHECKPOINT_DIR, run_id=run_id)
        except (OSError, RuntimeError, MlflowException) as exc:
            where = get_run(run_id).info.artifact_uri if run_id else mlflow.get_artifact_uri()
            raise DmatError(f"cannot save {CHECKPOINT_DIR}/{name} ({_first_line(exc)}): free disk space or make "
                            f"{where} writable") from None


def has_checkpoint(run_id: str, name: str) -> bool:
    """Whether the run logged checkpoints/`name`."""
    return any(a.path == f"{CHECKPOINT_DIR}/{name}" for a in MlflowClient().list_artifacts(run_id, CHECKPOINT_DIR))


def load_checkpoint(run_id: str, name: str = checkpoint.BEST) -> dict:
    """Download a run's checkpoint and load it with weights_only=True (the download is removed: MLflow would leave
    it in a temp folder of its own)."""
    get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="dmat-checkpoint-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}",
                                                       dst_path=tmp)
        except (MlflowException, OSError):
            raise DmatError(f"run {run_id} has no checkpoint {CHECKPOINT_DIR}/{name}: was it trained to the end?") \
                from None
        return checkpoint.load(path, f"{CHECKPOINT_DIR}/{name} of run {run_id}")


@dataclass
class LoadedModel:
    run_id: str
    role: str
    model: UNet
    diffusion: GaussianDiffusion
    tags: dict
    params: dict


def load_model(run_id: str, name: str = checkpoint.BEST, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a teacher or student from its run alone (EMA weights, in eval mode)."""
    run = get_run(run_id)
    require_role(run, MODEL_ROLES, "give a teacher or student run id", wanted="model")
    model, diffusion = checkpoint.build(load_checkpoint(run_id, name))
    return LoadedModel(run_id, run.data.tags[ROLE], model.to(device).eval(), diffusion, dict(run.data.tags),
                       dict(run.data.params))
