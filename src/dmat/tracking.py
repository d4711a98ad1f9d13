"""MLflow, and the one place that speaks its vocabulary for dmat.

Roles and tag keys, the search for runs by role and tags (values quoted), params to and from text
(with the `resolved.<name>` rule), the "run X is a Y run, not a Z" check, runs that end with the
right status, checkpoints as artifacts, rebuilding a model from a run id, and `MlflowRecorder`,
the training loop's recorder that writes to the active run.

Stages never hand each other paths on disk: a stage reads its inputs from earlier runs by id (or
"the latest finished run with these tags") and writes params, metrics, tags and artifacts of its
own run. So the embedded sqlite default and a remote tracking server behave the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import torch
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmat import checkpoint
from dmat.diffusion import GaussianDiffusion
from dmat.errors import DmatError
from dmat.recorder import Recorder
from dmat.unet import UNet

DEFAULT_EXPERIMENT = "dmat"
CHECKPOINT_DIR = "checkpoints"  # the artifact folder of a run's checkpoints (checkpoint.BEST, checkpoint.LAST)

# Roles: the value of the ROLE tag, one per kind of run.
TEACHER, STUDENT = "teacher", "student"
EVALUATION = "evaluation"
FEATURE_EXTRACTOR = "feature-extractor"
REPORT, PIPELINE, SWEEP = "report", "pipeline", "sweep"
MODEL_ROLES = (TEACHER, STUDENT)

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
MODEL_ROLE = "dmat.model_role"  # on an evaluation run: the role of the model it evaluates
FEATURE_EXTRACTOR_RUN_ID = "dmat.feature_extractor_run_id"
BEST_STUDENT_RUN_ID = "dmat.best_student_run_id"  # on a sweep run
# MLflow's own tags
RUN_NAME = "mlflow.runName"
PARENT_RUN_ID = "mlflow.parentRunId"
ENTRY_POINT = "mlflow.project.entryPoint"


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


def encode_param(value) -> str:
    """A param value as the text MLflow stores: tuples as comma lists, bools as true/false, floats
    as short as they round-trip (2e-4 -> "0.0002", 60.0 -> "60"), so equal values always log equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(encode_param(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def decode_param(text: str, kind):
    """The inverse of `encode_param` for a field's type hint (int, float, str, bool, tuple[int, ...])."""
    if typing.get_origin(kind) is tuple:
        return tuple(int(float(part)) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.strip().lower() not in ("true", "false", "1", "0"):
            raise DmatError(f"expected true or false, got {text!r}")
        return text.strip().lower() in ("true", "1")
    if kind is int:
        return int(float(text))
    return kind(text)


def param_value(params: dict[str, str], name: str) -> str | None:
    """A run's value of a param: the `resolved.<name>` one dmat logged beside a user's value wins."""
    return params.get(f"resolved.{name}", params.get(name))


def config_from_params(cls, params: dict[str, str]):
    """A config dataclass rebuilt from a run's params, defaults for what the run did not log."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        text = param_value(params, field.name)
        if text is not None:
            values[field.name] = decode_param(text, hints[field.name])
    return cls(**values)


def log_params(params: dict[str, object]) -> None:
    """Log params without clashing with values `mlflow run` already logged from -P arguments.

    A key already present keeps the user's value; a different resolved value (e.g. image_size 0 ->
    16) is logged beside it as `resolved.<key>`.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {}
    for key, value in params.items():
        text = encode_param(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text and not _same_value(existing[key], text):
            new[f"resolved.{key}"] = text
    if new:
        mlflow.log_params(new)


def _same_value(a: str, b: str) -> bool:
    """"60" and "60.0" (as `mlflow run` logs a float parameter) or "False" and "false" are one value."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


def save_checkpoint(payload: dict, name: str) -> None:
    """Write a checkpoint atomically and log it under checkpoints/ of the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        checkpoint.save(payload, path)
        mlflow.log_artifact(str(path), artifact_path=CHECKPOINT_DIR)


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise DmatError(f"no MLflow run with id {run_id!r} in {tracking_uri()}: check the id in the MLflow UI") from None


def load_checkpoint(run_id: str, name: str = checkpoint.BEST) -> dict:
    """Download a run's checkpoint and load it with weights_only=True."""
    get_run(run_id)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}")
    except (MlflowException, OSError):
        raise DmatError(f"run {run_id} has no checkpoint {CHECKPOINT_DIR}/{name}: was it trained to the end?") from None
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


class MlflowRecorder(Recorder):
    """`training.fit`'s recorder for the active MLflow run: metrics by epoch, checkpoints as artifacts."""

    def on_best(self, state: dict) -> None:
        save_checkpoint(state, checkpoint.BEST)

    def on_checkpoint(self, state: dict) -> None:
        save_checkpoint(state, checkpoint.LAST)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)

    def on_resume(self, epoch: int, metrics: dict[str, float]) -> None:
        """A run killed between saving last.pt and logging that epoch's metrics gets them logged now."""
        history = MlflowClient().get_metric_history(mlflow.active_run().info.run_id, "val_loss")
        if all(m.step != epoch for m in history):
            mlflow.log_metrics(metrics, step=epoch)

    def on_end(self, summary: dict[str, float]) -> None:
        mlflow.log_metrics(summary)


def require_role(run, role: str | tuple[str, ...], hint: str = "", wanted: str | None = None) -> None:
    """One clear error when `run` is not of `role` (a role or several): "run X is a Y run, not a
    {wanted}" (`wanted` defaults to the role names)."""
    roles = (role,) if isinstance(role, str) else role
    theirs = run.data.tags.get(ROLE)
    if theirs not in roles:
        wanted = wanted or " or ".join(roles)
        raise DmatError(f"run {run.info.run_id} is a {theirs or 'non-dmat'} run, not a {wanted}" + (f": {hint}" if hint else ""))


def _quoted(value) -> str:
    """A value as an MLflow search literal: in single quotes, or double quotes when it holds a single
    quote (MLflow's filter grammar has no escapes); a value with both cannot be searched for."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' in text:
        raise DmatError(f"cannot search MLflow for a value holding both quote characters: {text!r}")
    return f'"{text}"'


def search_filter(tags: dict[str, object] | None = None, params: dict[str, object] | None = None,
                  status: str | None = None) -> str:
    """An MLflow search filter matching these tags, params (encoded as logged) and status exactly."""
    clauses = [f"tags.`{k}` = {_quoted(v)}" for k, v in (tags or {}).items()]
    clauses += [f"params.`{k}` = {_quoted(encode_param(v))}" for k, v in (params or {}).items()]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    return " and ".join(clauses)


def find_runs(role: str | None, tags: dict[str, object] | None = None, status: str | None = "FINISHED",
              max_results: int = 1000, experiment_ids: list[str] | None = None, params: dict[str, object] | None = None):
    """Runs of a role (and tags, params) in these experiments (default: all), newest first, as mlflow Runs."""
    client = MlflowClient()
    tags = {**({ROLE: role} if role else {}), **(tags or {})}
    experiments = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, search_filter(tags, params, status),
                              order_by=["attributes.start_time DESC"], max_results=max_results)
