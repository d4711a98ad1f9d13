"""The tracking store a command is about to use: reachable, writable, not locked, in the right experiment.
Each problem is one line that names the store and what to do, before any work starts."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from urllib.parse import urlparse

import mlflow
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from dmat.errors import DmatError
from dmat.tracking.vocabulary import DEFAULT_EXPERIMENT, EXPERIMENT_KIND, MODEL_DEVELOPMENT


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
        path = sqlite_path(uri)
        if path and not os.path.exists(path) and not _writable_folder(os.path.dirname(path)):
            raise DmatError(f"tracking store {uri} cannot be created: folder {os.path.dirname(path)} is not writable: "
                            "run dmat in a writable folder or point MLFLOW_TRACKING_URI at another store")
        try:
            with _first_open_lock(uri):
                MlflowClient().search_experiments(max_results=1)
        except DmatError:
            raise
        except Exception as exc:
            raise DmatError(f"tracking store {uri} cannot be opened: {_first_line(exc)}") from None


def check_writable(experiment: str | None = None, run_id: str | None = None) -> None:
    """Fail with one line, before a run exists, if a new run of `experiment` (or run `run_id`, resumed)
    could not be written: a read-only sqlite store, a deleted experiment, a read-only artifact folder."""
    check_tracking_reachable()
    path = sqlite_path(tracking_uri())
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


def sqlite_path(uri: str) -> str | None:
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


LOCK_TIMEOUT_S = 120  # creating a new store's tables takes seconds; a lock held longer is a process gone astray


@contextlib.contextmanager
def _first_open_lock(uri: str):
    """Processes opening one new sqlite store at once race creating its tables: let them in one at a time. The
    lock file lies beside the database (part of the store, nothing left in the temp folder); a store whose folder
    cannot be written needs no lock (no tables can be created there)."""
    path = sqlite_path(uri)
    if path is None or not _writable_folder(os.path.dirname(path)):
        yield
        return
    lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.dmat-lock")
    try:  # mode 0o666: another user sharing the store (or only reading it) can take the lock too
        with FileLock(lock_path, mode=0o666, timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise DmatError(f"tracking store {uri} is locked: another process has held {lock_path} for over "
                        f"{LOCK_TIMEOUT_S:g} s: let that dmat command finish or stop it (fuser names it), "
                        "then rerun") from None


def experiment_name(name: str | None) -> str:
    """The experiment asked for, else $MLFLOW_EXPERIMENT_NAME, else the one `mlflow run` runs in
    ($MLFLOW_EXPERIMENT_ID, e.g. a pipeline stage), else dmat."""
    if name or os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return name or os.environ["MLFLOW_EXPERIMENT_NAME"]
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        try:
            return MlflowClient().get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"]).name
        except MlflowException:
            pass
    return DEFAULT_EXPERIMENT


def use_experiment(name: str | None) -> None:
    """Select the experiment new runs go to. Inside `mlflow run` the run already exists: its experiment, whatever
    was active before in this process (MLflow refuses to start the run under another)."""
    if "MLFLOW_RUN_ID" in os.environ:
        mlflow.set_experiment(experiment_id=get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id)
        return
    found = MlflowClient().get_experiment_by_name(experiment_name(name))
    if found is not None and found.lifecycle_stage == "deleted":
        raise _deleted(found)
    mlflow.set_experiment(experiment_name(name))


def mark_model_development(experiment_id: str) -> None:
    """MLflow 3's UI opens an experiment with no kind in its GenAI view (traces, judges): a dmat study is a
    model-training one. A kind someone set already is kept."""
    client = MlflowClient()
    if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise DmatError(f"no MLflow run with id {run_id!r} in {tracking_uri()}: check the id in the MLflow UI") from None
