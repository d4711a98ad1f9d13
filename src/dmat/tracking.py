"""MLflow: run lineage, run status, checkpoints as artifacts and rebuilding a model from a run id.

Stages never hand each other paths on disk: a stage reads its inputs from earlier runs by id (or
"the latest finished run with these tags") and writes params, metrics, tags and artifacts of its
own run. So the embedded sqlite default and a remote tracking server behave the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import torch
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmat.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.errors import DmatError
from dmat.unet import UNet, UNetConfig

DEFAULT_EXPERIMENT = "dmat"
CHECKPOINT_FORMAT = "dmat-checkpoint-v1"
CHECKPOINT_DIR = "checkpoints"
BEST, LAST = "best.pt", "last.pt"

# Lineage tags: the MLflow UI filters on them and the report rebuilds its tables from them.
ROLE = "dmat.role"
DATASET = "dmat.dataset"
IMAGE_SIZE = "dmat.image_size"
SIZE_FACTOR = "dmat.size_factor"
TEACHER_RUN_ID = "dmat.teacher_run_id"
MODEL_RUN_ID = "dmat.model_run_id"
METHOD = "dmat.method"
STUDY_NAME = "dmat.study_name"  # an Optuna sweep's study, on its parent run and its trials' students
TRIAL = "dmat.trial"  # the Optuna trial number of a sweep's student run
PRUNED = "dmat.pruned"  # a sweep student stopped by the pruner (the epoch)
MODEL_ROLES = ("teacher", "student")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking_reachable() -> None:
    """Fail fast with one line if the tracking server cannot be reached, before any run exists."""
    uri = tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise DmatError(
                f"tracking server {uri} is unreachable ({type(exc).__name__}): start it (make server) "
                "or point MLFLOW_TRACKING_URI at a running one"
            ) from None
    else:
        try:
            with _first_open_lock(uri):
                MlflowClient().search_experiments(max_results=1)
        except Exception as exc:
            raise DmatError(f"tracking store {uri} cannot be opened: {exc}") from None


def _first_open_lock(uri: str):
    """Processes opening one new sqlite store at once race creating its tables: let them in one at a time."""
    if urlparse(uri).scheme != "sqlite":
        return contextlib.nullcontext()
    path = os.path.abspath(uri[len("sqlite:///"):])
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    return FileLock(os.path.join(tempfile.gettempdir(), f"dmat-store-{digest}.lock"))


def experiment_name(name: str | None) -> str:
    """The experiment asked for, else $MLFLOW_EXPERIMENT_NAME, else dmat."""
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def use_experiment(name: str | None) -> None:
    """Select the experiment new runs go to (inside `mlflow run`, the run already exists)."""
    if "MLFLOW_RUN_ID" not in os.environ:
        mlflow.set_experiment(experiment_name(name))


@contextlib.contextmanager
def tracked_run(run_name: str, tags: dict[str, str], experiment: str | None = None, run_id: str | None = None):
    """An MLflow run that ends FINISHED, FAILED on an exception, or KILLED on Ctrl-C.

    Inside `mlflow run` it continues the run that MLflow created (MLFLOW_RUN_ID); `run_id` reopens an
    existing run (resume).
    """
    if run_id:  # the run's own experiment, whatever $MLFLOW_EXPERIMENT_NAME says
        mlflow.set_experiment(experiment_id=get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id)
    else:
        use_experiment(experiment)
        run = mlflow.start_run(run_name=None if "MLFLOW_RUN_ID" in os.environ else run_name)
    mlflow.set_tags({**tags, "mlflow.runName": run.info.run_name or run_name})
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_params(params: dict[str, object]) -> None:
    """Log params without clashing with values `mlflow run` already logged from -P arguments.

    A key already present keeps the user's value; a different resolved value (e.g. image_size 0 ->
    16) is logged beside it as `resolved.<key>`.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {}
    for key, value in params.items():
        text = str(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text and not _same_number(existing[key], text):
            new[f"resolved.{key}"] = text
    if new:
        mlflow.log_params(new)


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def save_checkpoint(payload: dict, name: str) -> None:
    """Write a checkpoint atomically (temp file + rename) and log it under checkpoints/."""
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / name
        partial = final.with_suffix(".partial")
        torch.save(payload, partial)
        os.replace(partial, final)
        mlflow.log_artifact(str(final), artifact_path=CHECKPOINT_DIR)


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise DmatError(f"no MLflow run with id {run_id!r} in {tracking_uri()}: check the id in the MLflow UI") from None


def load_checkpoint(run_id: str, name: str = BEST) -> dict:
    """Download and load a checkpoint of a run with weights_only=True."""
    get_run(run_id)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}")
    except (MlflowException, OSError):
        raise DmatError(f"run {run_id} has no checkpoint {CHECKPOINT_DIR}/{name}: was it trained to the end?") from None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DmatError(f"{CHECKPOINT_DIR}/{name} of run {run_id} is not a dmat checkpoint")
    return ckpt


def model_checkpoint(model: UNet, diffusion: GaussianDiffusion, weights: dict, **extra) -> dict:
    """The self-describing checkpoint: weights plus everything needed to rebuild the model."""
    return {
        "format": CHECKPOINT_FORMAT,
        "unet_config": model.config.to_dict(),
        "diffusion_config": diffusion.config.to_dict(),
        "model": weights,
        **extra,
    }


def build_from_checkpoint(ckpt: dict) -> tuple[UNet, GaussianDiffusion]:
    model = UNet(UNetConfig.from_dict(ckpt["unet_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DmatError(f"checkpoint weights do not match the config saved with them ({first})") from None
    return model, GaussianDiffusion(DiffusionConfig(**ckpt["diffusion_config"]))


@dataclass
class LoadedModel:
    run_id: str
    role: str
    model: UNet
    diffusion: GaussianDiffusion
    tags: dict
    params: dict


def load_model(run_id: str, name: str = BEST, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a teacher or student from its run alone (EMA weights, in eval mode)."""
    run = get_run(run_id)
    role = run.data.tags.get(ROLE)
    if role not in MODEL_ROLES:
        raise DmatError(f"run {run_id} is a {role or 'non-dmat'} run, not a model: give a teacher or student run id")
    model, diffusion = build_from_checkpoint(load_checkpoint(run_id, name))
    return LoadedModel(run_id, role, model.to(device).eval(), diffusion, dict(run.data.tags), dict(run.data.params))


def find_runs(role: str, tags: dict[str, str] | None = None, status: str | None = "FINISHED", max_results: int = 1000):
    """Runs of a role (and tags) across all experiments, newest first, as a list of mlflow Run."""
    clauses = [f"tags.`{ROLE}` = '{role}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    experiments = [e.experiment_id for e in MlflowClient().search_experiments()]
    return MlflowClient().search_runs(
        experiments, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=max_results
    )
