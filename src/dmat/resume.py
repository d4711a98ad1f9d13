"""Continuing an interrupted (KILLED or FAILED) training run in the same MLflow run.

The run's `checkpoints/last.pt` holds the model, optimizer, EMA, early-stopping state and RNG after
its last finished epoch; its params hold the options it was started with.
"""

from __future__ import annotations

from mlflow.entities import RunStatus

from dmat import checkpoint, tracking
from dmat.diffusion import GaussianDiffusion
from dmat.errors import DmatError
from dmat.unet import UNet

RESUMABLE = (RunStatus.to_string(RunStatus.KILLED), RunStatus.to_string(RunStatus.FAILED))


def checkpoint_to_resume(run_id: str, role: str, model: UNet, diffusion: GaussianDiffusion) -> dict:
    """`last.pt` of a run that may be resumed as `role` with this model (with its best weights as
    `best_model`), or one clear error why not."""
    run = tracking.get_run(run_id)
    tracking.require_role(run, role, "resume it with the command that started it")
    status = run.info.status
    if status not in RESUMABLE:
        hint = (" (if its process is gone, mark it with MlflowClient().set_terminated(run_id, 'KILLED'))"
                if status == "RUNNING" else "")
        raise DmatError(f"run {run_id} is {status}: only KILLED or FAILED runs can be resumed{hint}")
    ckpt = tracking.load_checkpoint(run_id, checkpoint.LAST)
    if "train_state" not in ckpt:
        raise DmatError(f"checkpoints/last.pt of run {run_id} holds no training state: it cannot be resumed")
    if not checkpoint.same_architecture(ckpt, model, diffusion):
        raise DmatError(f"run {run_id} was trained with another architecture or noise schedule: "
                        "resume it without architecture or diffusion options")
    # the best weights so far: fit keeps the best in memory, and it may predate the interruption
    return {**ckpt, "best_model": tracking.load_checkpoint(run_id, checkpoint.BEST)["model"]}


def configs_from_run(run_id: str, classes: tuple) -> tuple:
    """The configs a run was started with, so `--resume RUN_ID` needs no other option."""
    params = tracking.get_run(run_id).data.params
    return tuple(tracking.config_from_params(cls, params) for cls in classes)


def student_settings_from_run(run_id: str) -> tuple:
    """The TrainConfig, DistillConfig and teacher run an interrupted student was started with, so
    `dmat distill --resume RUN_ID` needs no other option."""
    from dmat.config import DistillConfig, TrainConfig

    train, distill = configs_from_run(run_id, (TrainConfig, DistillConfig))
    return train, distill, tracking.get_run(run_id).data.params.get("teacher_run_id")
