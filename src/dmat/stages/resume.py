"""Continuing an interrupted (KILLED or FAILED) training run in the same MLflow run.

The run's `checkpoints/last.pt` holds the model, optimizer, EMA, early-stopping state and RNG after
its last finished epoch; its params hold the options it was started with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from dmat import tracking
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.runtime import resolve_device, resolve_precision
from dmat.tracking import claims, registry
from dmat.tracking.params import _same_value

RESUMABLE = (RunStatus.to_string(RunStatus.KILLED), RunStatus.to_string(RunStatus.FAILED))
COMMANDS = {role: f"dmat {tracking.COMMAND_OF[role]}" for role in tracking.MODEL_ROLES}  # what trains a role


# roles no `--resume` continues: the command whose rerun does the work again (finished work is reused)
RERUNS = {tracking.PIPELINE: "rerun the same `dmat pipeline` command (finished stages are reused)",
          tracking.EVALUATION: "rerun `dmat evaluate --all` (it evaluates every model not yet evaluated)",
          tracking.FEATURE_EXTRACTOR: "rerun `dmat evaluate --all` (it trains the feature extractor it needs)",
          tracking.REPORT: "rerun `dmat report --all`",
          tracking.SWEEP: "rerun the same `dmat sweep` command (the study continues from its storage)",
          tracking.COST: "rerun `dmat cost`"}


def resume_command(role: str, run_id: str) -> str:
    return f"{COMMANDS.get(role, 'dmat ' + role)} --resume {run_id}"


def what_to_do(role: str, run_id: str) -> str:
    """How to continue a stopped run: `--resume` for the roles that train, else the command to rerun."""
    if role in COMMANDS:
        return f"resume it with `{resume_command(role, run_id)}`"
    return RERUNS.get(role, "start it again with the command that started it")


def checkpoint_to_resume(run_id: str, role: str, model: UNet, diffusion: GaussianDiffusion) -> dict:
    """`last.pt` of a run that may be resumed as `role` with this model (with its best weights as
    `best_model`), or one clear error why not."""
    run = tracking.get_run(run_id)
    tracking.require_role(run, role, "resume it with the command that started it")
    status = run.info.status
    if status == RunStatus.to_string(RunStatus.RUNNING):
        raise DmatError(_still_running(run))
    if status not in RESUMABLE:
        raise DmatError(f"run {run_id} is {status}: only KILLED or FAILED runs can be resumed")
    if not tracking.has_checkpoint(run_id, checkpoint.LAST):
        when = "before its first save" if "val_loss" in run.data.metrics else "before its first epoch finished"
        raise DmatError(f"run {run_id} was stopped {when}, so it has no checkpoints/last.pt and there is nothing "
                        "to resume: start a new run with the same options")
    ckpt = tracking.load_checkpoint(run_id, checkpoint.LAST)
    if "train_state" not in ckpt:
        raise DmatError(f"checkpoints/last.pt of run {run_id} holds no training state: it cannot be resumed")
    if not checkpoint.same_architecture(ckpt, model, diffusion):
        raise DmatError(f"run {run_id} was trained with another architecture or noise schedule: "
                        "resume it without architecture or diffusion options")
    # the best weights so far: fit keeps the best in memory, and it may predate the interruption
    return {**ckpt, "best_model": tracking.load_checkpoint(run_id, checkpoint.BEST)["model"]}


def _still_running(run) -> str:
    from dmat.tracking.liveness import STALE_MINUTES, why_stale

    run_id, reason = run.info.run_id, why_stale(run)
    if reason:
        return (f"run {run_id} is still marked RUNNING, but {reason}: mark it KILLED with "
                f"`dmat runs --stale --mark-killed`, then resume it")
    return (f"run {run_id} is RUNNING: only KILLED or FAILED runs can be resumed (if its process is gone, "
            f"`dmat runs --stale` lists it once it has missed {STALE_MINUTES:g} minutes of heartbeats)")


def configs_from_run(run_id: str, classes: tuple) -> tuple:
    """The configs a run was started with, so `--resume RUN_ID` needs no other option."""
    tracking.check_tracking_reachable()  # one quick line, not minutes of retries, when the server is down
    params = tracking.get_run(run_id).data.params
    return tuple(tracking.config_from_params(cls, params) for cls in classes)


def check_same_student(run_id: str, config, teacher_run_id: str | None) -> None:
    """A resumed student stays what it was started as: another method, initialisation, loss weight, resolution or
    teacher would relabel a half-trained student (and mix the distill-vs-scratch comparison). Sampling steps may
    change (they do not touch training)."""
    params = tracking.get_run(run_id).data.params
    given = {**dataclasses.asdict(config), "teacher_run_id": registry.run_id_of(teacher_run_id)}
    given.pop("student_steps", None)
    changed = [f"{name} {params[name]} -> {tracking.encode_param(value)}" for name, value in given.items()
               if value is not None and name in params and not _same_value(params[name], tracking.encode_param(value))]
    if changed:
        raise DmatError(f"run {run_id} was started with other settings ({', '.join(changed)}): resume it with its own "
                        f"(`{resume_command(tracking.STUDENT, run_id)}`, no other option), or start a new run")


def student_settings_from_run(run_id: str) -> tuple:
    """The TrainConfig, DistillConfig and teacher run an interrupted student was started with, so
    `dmat distill --resume RUN_ID` needs no other option."""
    from dmat.config import DistillConfig, TrainConfig

    train, distill = configs_from_run(run_id, (TrainConfig, DistillConfig))
    return train, distill, tracking.get_run(run_id).data.params.get("teacher_run_id")


def settings_key(train, config, teacher_run_id: str) -> str:
    """A student's identity as one tag value (SETTINGS_KEY): its training and distillation settings, its teacher
    and the commit it runs at, hashed. A students loop that meets a stopped student with its key continues it.
    Precision counts as resolved (`auto` is bf16 or fp32 by the machine): students at another precision differ."""
    train = dataclasses.replace(train, precision=resolve_precision(train.precision, resolve_device(train.device)))
    fields = [dataclasses.asdict(train), dataclasses.asdict(config), teacher_run_id, _commit()]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


@functools.cache
def _commit() -> str:
    """The commit of the code this process runs (MLflow's git tag; asked once: it asks git)."""
    return resolve_tags().get(tracking.GIT_COMMIT, "")


def settled(run: Run) -> Run:
    """The run once no process trains it: waited for while its process lives (elsewhere), marked KILLED as if
    killed once that process is gone (kill -9, a Ray node lost)."""
    if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
        return run
    if not claims.wait_for(run.info.run_id) and tracking.get_run(run.info.run_id).info.status == "RUNNING":
        MlflowClient().set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return tracking.get_run(run.info.run_id)


def continuable(run: Run) -> bool:
    """Stopped by a signal or with its process (`mlflow run` then says FAILED, the tag says why), with a last.pt
    to continue from; a run that failed on an error would fail again."""
    stopped = run.info.status == RunStatus.to_string(RunStatus.KILLED) or tracking.STOPPED_BY_SIGNAL in run.data.tags
    return stopped and tracking.has_checkpoint(run.info.run_id, checkpoint.LAST)


def stopped_student(key: str, experiment: str | None) -> str | None:
    """The newest student with this SETTINGS_KEY in the experiment that stopped before it finished and can be
    continued, if any (one still training elsewhere is waited for first)."""
    found = MlflowClient().get_experiment_by_name(tracking.experiment_name(experiment))
    runs = tracking.find_runs(tracking.STUDENT, {tracking.SETTINGS_KEY: key}, status=None, max_results=20,
                              experiment_ids=[found.experiment_id]) if found else []
    return next((run.info.run_id for run in map(settled, runs) if continuable(run)), None)
