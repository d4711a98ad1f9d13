"""MLflow, and the one place that speaks its vocabulary for dmat.

Roles and tag keys, the search for runs by role and tags (values quoted), params to and from text
(with the `resolved.<name>` rule), the "run X is a Y run, not a Z" check, runs that end with the
right status, checkpoints as artifacts, rebuilding a model from a run id, and `MlflowRecorder`,
the training loop's recorder that writes to the active run (or to a run given by id, when a loop trains
several models at once, each in a run of its own).

Stages never hand each other paths on disk: a stage reads its inputs from earlier runs by id (or
"the latest finished run with these tags") and writes params, metrics, tags and artifacts of its
own run. So the embedded sqlite default and a remote tracking server behave the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import psutil
import torch
from filelock import FileLock
from mlflow.entities import RunStatus, RunTag
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from sqlalchemy.engine import make_url

from dmat import checkpoint, runtime
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
COST = "cost"  # models of a study timed side by side (dmat.side_by_side)
MODEL_ROLES = (TEACHER, STUDENT)

# Lineage tags: the MLflow UI filters on them and the report rebuilds its tables from them.
ROLE = "dmat.role"
DATASET = "dmat.dataset"
IMAGE_SIZE = "dmat.image_size"
SIZE_FACTOR = "dmat.size_factor"
TEACHER_RUN_ID = "dmat.teacher_run_id"
MODEL_RUN_ID = "dmat.model_run_id"
METHOD = "dmat.method"
INIT = "dmat.init"  # a student's starting weights: random or pruned (from its teacher)
STUDY_NAME = "dmat.study_name"  # an Optuna sweep's study, on its parent run and its trials' students
TRIAL = "dmat.trial"  # the Optuna trial number of a sweep's student run
PRUNED = "dmat.pruned"  # a sweep student stopped by the pruner (the epoch)
MODEL_ROLE = "dmat.model_role"  # on an evaluation run: the role of the model it evaluates
FEATURE_EXTRACTOR_RUN_ID = "dmat.feature_extractor_run_id"
BEST_STUDENT_RUN_ID = "dmat.best_student_run_id"  # on a sweep run
# Who runs a run, for `dmat runs --stale` (a run left RUNNING by a process that is gone)
OWNER_HOST = "dmat.host"
OWNER_PID = "dmat.pid"
OWNER_STARTED = "dmat.pid_started"  # the process's start time: a reused pid is another process
HEARTBEAT = "dmat.heartbeat"  # unix time, renewed every HEARTBEAT_SECONDS while the run's process lives
HEARTBEAT_SECONDS = 60
# MLflow's own tags
RUN_NAME = "mlflow.runName"
PARENT_RUN_ID = "mlflow.parentRunId"
ENTRY_POINT = "mlflow.project.entryPoint"
# MLflow-native models and lineage (dmat.serving, dmat.registry, dmat.lineage, dmat.notes)
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's: the commit a project run (a pipeline stage) ran at
SOURCE_DIRTY = "dmat.source_dirty"  # on a pipeline stage: "true" if the checkout had uncommitted changes
NOTE = "mlflow.note.content"  # MLflow's run description (markdown), shown on the run page
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's experiment tag choosing the UI's view
MODEL_DEVELOPMENT = "custom_model_development"  # its value for a model-training study (not the GenAI view)
EVALUATION_RUN_ID = "dmat.evaluation_run_id"  # on a model version: the evaluation its score tags come from
EVAL_SETTINGS = "dmat.eval_settings"  # on a model version: how its scores were measured (like compared with like)
SYSTEM_METRICS_ROLES = (TEACHER, STUDENT, FEATURE_EXTRACTOR, EVALUATION)  # runs that log system/* metrics


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
        path = _sqlite_path(uri)
        if path and not os.path.exists(path) and not _writable_folder(os.path.dirname(path)):
            raise DmatError(f"tracking store {uri} cannot be created: folder {os.path.dirname(path)} is not writable: "
                            "run dmat in a writable folder or point MLFLOW_TRACKING_URI at another store")
        try:
            with _first_open_lock(uri):
                MlflowClient().search_experiments(max_results=1)
        except Exception as exc:
            raise DmatError(f"tracking store {uri} cannot be opened: {_first_line(exc)}") from None


def check_writable(experiment: str | None = None, run_id: str | None = None) -> None:
    """Fail with one line, before a run exists, if a new run of `experiment` (or run `run_id`, resumed)
    could not be written: a read-only sqlite store, a deleted experiment, a read-only artifact folder."""
    check_tracking_reachable()
    path = _sqlite_path(tracking_uri())
    if path:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60, isolation_level=None)) as db:
                db.execute("BEGIN IMMEDIATE")  # a schema change rolled back: writes nothing, needs write access
                db.execute("CREATE TABLE dmat_write_probe (x)")
                db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise DmatError(f"tracking store {tracking_uri()} cannot be written ({exc}): make {path} and its folder "
                            "writable, or point MLFLOW_TRACKING_URI at another store") from None
    if run_id:
        location = get_run(run_id).info.artifact_uri
    elif "MLFLOW_RUN_ID" in os.environ:
        return
    else:
        found = MlflowClient().get_experiment_by_name(experiment_name(experiment))
        if found is not None and found.lifecycle_stage == "deleted":
            raise _deleted(found)
        location = found.artifact_location if found else os.path.abspath("mlruns") if path else None
    folder = _local_path(location)
    if folder and not _writable_folder(folder):
        raise DmatError(f"artifact folder {folder} is not writable: checkpoints could not be saved; make it "
                        "writable or point MLFLOW_TRACKING_URI at another store")


def _deleted(experiment) -> DmatError:
    return DmatError(f"experiment {experiment.name!r} is deleted in {tracking_uri()}: restore it (mlflow experiments "
                     f"restore --experiment-id {experiment.experiment_id}) or choose another with --experiment")


def _sqlite_path(uri: str) -> str | None:
    """The database file of a sqlite:/// tracking URI, else None."""
    if urlparse(uri).scheme != "sqlite":
        return None
    database = make_url(uri).database
    return os.path.abspath(database) if database and database != ":memory:" else None


def _local_path(uri: str | None) -> str | None:
    """A local artifact location (a path or file: URI) as a path, else None (a server's artifacts)."""
    if not uri:
        return None
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else None


def _writable_folder(folder: str) -> bool:
    """Whether files can be created in `folder`, or in its nearest existing parent if it does not exist yet."""
    folder = os.path.abspath(folder or ".")
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _first_open_lock(uri: str):
    """Processes opening one new sqlite store at once race creating its tables: let them in one at a time."""
    path = _sqlite_path(uri)
    if path is None:
        return contextlib.nullcontext()
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    # mode 0o666: another user sharing the store (or only reading it) can take the lock too
    return FileLock(os.path.join(tempfile.gettempdir(), f"dmat-store-{digest}.lock"), mode=0o666)


def experiment_name(name: str | None) -> str:
    """The experiment asked for, else $MLFLOW_EXPERIMENT_NAME, else dmat."""
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def use_experiment(name: str | None) -> None:
    """Select the experiment new runs go to (inside `mlflow run`, the run already exists)."""
    if "MLFLOW_RUN_ID" not in os.environ:
        found = MlflowClient().get_experiment_by_name(experiment_name(name))
        if found is not None and found.lifecycle_stage == "deleted":
            raise _deleted(found)
        mlflow.set_experiment(experiment_name(name))


@contextlib.contextmanager
def tracked_run(run_name: str, tags: dict[str, str], experiment: str | None = None, run_id: str | None = None,
                active: bool = True):
    """An MLflow run that ends FINISHED, FAILED on an exception, or KILLED on Ctrl-C or SIGTERM.

    Inside `mlflow run` it continues the run that MLflow created (MLFLOW_RUN_ID); `run_id` reopens an
    existing run (resume). A second signal while the run is being closed is ignored, so the run is always
    marked (runtime.stop_signals). The run is tagged with its process and keeps a heartbeat, so a run left
    RUNNING by a process that died (kill -9) can be found: `dmat runs --stale`.

    `active=False` creates a new run without making it MLflow's active run, so that several can be open at
    once (one loop training several models): write to it by id (`MlflowRecorder(run_id=...)`, `log_params`).
    """
    run, status, heartbeat, monitor = None, RunStatus.to_string(RunStatus.FINISHED), _Heartbeat(), None
    with runtime.stop_signals():
        try:
            with runtime.hold_signals():  # a signal while the run is created is raised once it can be marked
                system_metrics = system_metrics_for(tags.get(ROLE))
                if active:
                    run = _start_run(run_name, experiment, run_id, system_metrics)
                else:
                    run, monitor = _create_run(run_name, experiment, system_metrics)
                tags = {**tags, RUN_NAME: readable_name(run.info.run_name, run_name), **owner_tags()}
                MlflowClient().log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                mark_model_development(run.info.experiment_id)
                heartbeat.start(run.info.run_id)
            yield run
        except KeyboardInterrupt:
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        except BaseException:
            status = RunStatus.to_string(RunStatus.FAILED)
            raise
        finally:
            heartbeat.stop()
            if run is not None and active:
                mlflow.end_run(status)
            elif run is not None:
                MlflowClient().set_terminated(run.info.run_id, status)
                if monitor is not None:
                    monitor.finish()


def _start_run(run_name: str, experiment: str | None, run_id: str | None, system_metrics: bool | None = None):
    """Start (or reopen) the run; a store that refuses it is one line, and no run exists."""
    try:
        if run_id:  # the run's own experiment, whatever $MLFLOW_EXPERIMENT_NAME says
            mlflow.set_experiment(experiment_id=get_run(run_id).info.experiment_id)
            return mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        use_experiment(experiment)
        return mlflow.start_run(run_name=None if "MLFLOW_RUN_ID" in os.environ else run_name,
                                log_system_metrics=system_metrics)
    except MlflowException as exc:
        raise DmatError(f"tracking store {tracking_uri()} refused to start the run ({_first_line(exc)})") from None


def _create_run(run_name: str, experiment: str | None, system_metrics: bool | None):
    """A new run that is not MLflow's active run, and its system metrics monitor (None when they are off).
    Inside `mlflow run` (an entry point that trains several models) it is nested under the entry point's run."""
    use_experiment(experiment)  # refuses a deleted experiment, creates a new one
    client = MlflowClient()
    parent = {PARENT_RUN_ID: os.environ["MLFLOW_RUN_ID"]} if "MLFLOW_RUN_ID" in os.environ else {}
    try:
        found = client.get_experiment_by_name(experiment_name(experiment))
        run = client.create_run(found.experiment_id if found else client.create_experiment(experiment_name(experiment)),
                                run_name=run_name, tags=resolve_tags(parent))  # MLflow's source and user tags, as fluent runs get
    except MlflowException as exc:
        raise DmatError(f"tracking store {tracking_uri()} refused to start the run ({_first_line(exc)})") from None
    monitor = SystemMetricsMonitor(run.info.run_id) if system_metrics else None
    if monitor is not None:
        monitor.start()
    return run, monitor


def system_metrics_for(role: str | None) -> bool | None:
    """MLflow's system metrics (system/cpu_utilization_percentage, ...; GPU with nvidia-ml-py) are on for
    training and evaluation runs unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is false (what the commands'
    `--system-metrics false` sets); None leaves other runs to MLflow's default."""
    if role not in SYSTEM_METRICS_ROLES:
        return None
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no four INFO lines per run
    return MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get() if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.is_set() else True


def readable_name(current: str | None, wanted: str) -> str:
    """The run's name: dmat's descriptive one unless the run already has a name a person chose (`mlflow run
    --run-name`, a resumed run); the random name MLflow gives a project run (`lyrical-pig-613`) is replaced."""
    from mlflow.utils import name_utils  # its word lists; a later MLflow without them: the shape alone

    words = (current or "").split("-")
    random = (len(words) == 3 and words[2].isdigit() and words[0] in getattr(name_utils, "_GENERATOR_PREDICATES", words)
              and words[1] in getattr(name_utils, "_GENERATOR_NOUNS", words))
    return wanted if not current or random else current


def mark_model_development(experiment_id: str) -> None:
    """MLflow 3's UI opens an experiment with no kind in its GenAI view (traces, judges): a dmat study is a
    model-training one. A kind someone set already is kept."""
    client = MlflowClient()
    if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)


def owner_tags() -> dict[str, str]:
    """This process: host, pid and start time (a pid may be reused by a later process)."""
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_STARTED: f"{psutil.Process().create_time():.2f}", HEARTBEAT: str(int(time.time()))}


class _Heartbeat:
    """Renews a run's HEARTBEAT tag every HEARTBEAT_SECONDS from a daemon thread, until stopped."""

    def __init__(self):
        self._stop = threading.Event()

    def start(self, run_id: str) -> None:
        threading.Thread(target=self._beat, args=(run_id,), name="dmat-heartbeat", daemon=True).start()

    def _beat(self, run_id: str) -> None:
        client = MlflowClient()
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a store that is briefly busy only delays the next beat
                client.set_tag(run_id, HEARTBEAT, str(int(time.time())))

    def stop(self) -> None:
        self._stop.set()


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


def log_params(params: dict[str, object], run_id: str | None = None) -> None:
    """Log params to the active run (or `run_id`) without clashing with values `mlflow run` already logged
    from -P arguments.

    A key already present keeps the user's value; a different resolved value (e.g. image_size 0 ->
    16) is logged beside it as `resolved.<key>`.
    """
    existing = mlflow.get_run(run_id or mlflow.active_run().info.run_id).data.params
    new = {}
    for key, value in params.items():
        text = encode_param(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text and not _same_value(existing[key], text):
            new[f"resolved.{key}"] = text
    if new:
        mlflow.log_params(new, run_id=run_id)


def _same_value(a: str, b: str) -> bool:
    """"60" and "60.0" (as `mlflow run` logs a float parameter) or "False" and "false" are one value."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


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
    """The training loop's recorder for an MLflow run: metrics by epoch, checkpoints as artifacts. The run is
    `run_id`, or the active run when it is None (as MLflow's own log functions take it): a loop that trains
    several models writes to each one's run by id. `saved_epoch` is the epoch checkpoints/last.pt holds
    (what a resume would continue after)."""

    def __init__(self, saved_epoch: int = 0, run_id: str | None = None):
        self.saved_epoch, self.run_id = saved_epoch, run_id
        self._logged: set[int] = set()  # epochs a killed process logged after its last.pt

    def _save(self, state: dict, name: str) -> None:
        save_checkpoint(state, name, **({"run_id": self.run_id} if self.run_id else {}))

    def on_best(self, state: dict) -> None:
        self._save(state, checkpoint.BEST)

    def on_checkpoint(self, state: dict) -> None:
        self._save(state, checkpoint.LAST)
        self.saved_epoch = state["epoch"]

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in self._logged:
            mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)

    def on_resume(self, epoch: int, metrics: dict[str, float]) -> None:
        """The history continues after `epoch`, once per step: its metrics are logged now if the run was
        killed between saving last.pt and logging them, and epochs after it that a killed process had
        logged (kill -9 between save intervals) are trained again from the same state, not logged twice."""
        run_id = self.run_id or mlflow.active_run().info.run_id
        steps = {m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")}
        if epoch not in steps:
            mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)
        self._logged = {step for step in steps if step > epoch}

    def on_end(self, summary: dict[str, float]) -> None:
        mlflow.log_metrics(summary, run_id=self.run_id)


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
