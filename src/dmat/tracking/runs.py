"""A run's lifecycle: started (or resumed) with its tags, kept alive by a heartbeat, ended with the status
that says what happened (FINISHED, FAILED, KILLED on a stop signal)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import mlflow
import psutil
from mlflow.entities import RunStatus, RunTag
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient, fluent
from mlflow.tracking.context.registry import resolve_tags

from dmat import runtime
from dmat.errors import DmatError
from dmat.tracking.claims import ClaimedElsewhere, earlier_claim
from dmat.tracking.store import (
    _first_line,
    experiment_name,
    get_run,
    mark_model_development,
    tracking_uri,
    use_experiment,
)
from dmat.tracking.vocabulary import (
    CLAIM,
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    OWNER_HOST,
    OWNER_PID,
    OWNER_STARTED,
    OWNER_WORKER,
    LAUNCHED_BY,
    REPORT,
    REPORT_PATH,
    ROLE,
    RUN_NAME,
    STOPPED_BY_SIGNAL,
    SYSTEM_METRICS_ROLES,
)


@contextlib.contextmanager
def tracked_run(run_name: str, tags: dict[str, str], experiment: str | None = None, run_id: str | None = None,
                active: bool = True, claim: str | None = None):
    """An MLflow run that ends FINISHED, FAILED on an exception, or KILLED on Ctrl-C or SIGTERM.

    Inside `mlflow run` it continues the run that MLflow created (MLFLOW_RUN_ID); `run_id` reopens an
    existing run (resume). A second signal while the run is being closed is ignored, so the run is always
    marked (runtime.stop_signals). The run is tagged with its process and keeps a heartbeat, so a run left
    RUNNING by a process that died (kill -9) can be found: `dmat runs --stale`.

    `active=False` creates (or reopens) a run without making it MLflow's active run, so that several can be open
    at once (one loop training several models): write to it by id (`MlflowRecorder(run_id=...)`, `log_params`).

    `claim` (a claims.claim_key) makes the run a claim on that work: if another run holds it (tracking.claims),
    this run is deleted and ClaimedElsewhere names the holder, before the body runs, or after it (a rival's claim
    that reached the store late) instead of finishing: what the body logged to this run is then discarded.
    """
    run, status, heartbeat, monitor = None, RunStatus.to_string(RunStatus.FINISHED), _Heartbeat(), None
    lost = False
    with runtime.stop_signals():
        try:
            with runtime.hold_signals():  # a signal while the run is created is raised once it can be marked
                system_metrics = system_metrics_for(tags.get(ROLE))
                if active:
                    run = _start_run(run_name, experiment, run_id, system_metrics)
                else:
                    run, monitor = _create_run(run_name, experiment, run_id, system_metrics)
                tags = {**tags, RUN_NAME: readable_name(run.info.run_name, run_name), **owner_tags(),
                        **({CLAIM: claim} if claim else {})}
                MlflowClient().log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                mark_model_development(run.info.experiment_id)
                heartbeat.start(run.info.run_id)
            holder = earlier_claim(run.info.run_id, claim) if claim else None
            if holder is None:
                yield run
                holder = earlier_claim(run.info.run_id, claim) if claim else None  # a late rival: see claims
            if holder:
                lost = True
                raise ClaimedElsewhere(holder)
        except KeyboardInterrupt as stop:
            status = RunStatus.to_string(RunStatus.KILLED)
            if run is not None:
                with contextlib.suppress(Exception):  # the status says it too; the store may be what failed
                    MlflowClient().set_tag(run.info.run_id, STOPPED_BY_SIGNAL, str(stop) or "SIGINT")
            raise
        except BaseException:
            status = RunStatus.to_string(RunStatus.FAILED)
            raise
        finally:
            heartbeat.stop()
            if run is not None:
                _end(run.info.run_id, status, active, monitor)
            if lost:
                MlflowClient().delete_run(run.info.run_id)


_UNMARKED = "dmat_unmarked_status"  # on the error of a store that failed as a run was ended: the status not written


def _end(run_id: str, status: str, active: bool, monitor: SystemMetricsMonitor | None) -> None:
    """Mark the run with its status. A store that fails now (a dead server, a store turned read-only) leaves it
    RUNNING: its error says so (unmarked_status), so that no message claims a status the store does not show."""
    try:
        if active:
            mlflow.end_run(status)
        else:
            MlflowClient().set_terminated(run_id, status)
    except Exception as exc:
        setattr(exc, _UNMARKED, status)
        # MLflow stops an active run's system metrics only once the store took its end: else they go on failing
        monitor = monitor or fluent.run_id_to_system_metrics_monitor.pop(run_id, None)
        raise
    finally:
        if monitor is not None:
            monitor.finish()


def unmarked_status(exc: BaseException) -> str | None:
    """The status a run could not be marked with because `exc` (the store failing as the run ended) stopped it;
    None when the run was marked."""
    return getattr(exc, _UNMARKED, None)


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


def _create_run(run_name: str, experiment: str | None, run_id: str | None, system_metrics: bool | None):
    """A new run (or `run_id` reopened) that is not MLflow's active run, and its system metrics monitor (None when
    they are off). Inside `mlflow run` (an entry point that trains several models) it is tagged with the entry
    point's run as the one that launched it (LAUNCHED_BY; a model run is not nested): a reopened run with the loop
    that continues it."""
    client = MlflowClient()
    parent = {LAUNCHED_BY: os.environ["MLFLOW_RUN_ID"]} if "MLFLOW_RUN_ID" in os.environ else {}
    try:
        if run_id:
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            if parent:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in parent.items()])
            run = client.get_run(run_id)
        else:
            use_experiment(experiment)  # refuses a deleted experiment, creates a new one
            found = client.get_experiment_by_name(experiment_name(experiment))
            experiment_id = found.experiment_id if found else client.create_experiment(experiment_name(experiment))
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags=resolve_tags(parent))  # MLflow's source and user tags, as fluent runs get
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


def owner_tags() -> dict[str, str]:
    """This process: host, pid and start time (a pid may be reused by a later process)."""
    worker = {OWNER_WORKER: os.environ["DMAT_WORKER"]} if os.environ.get("DMAT_WORKER") else {}
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_STARTED: f"{psutil.Process().create_time():.2f}", HEARTBEAT: str(int(time.time())), **worker}


@contextlib.contextmanager
def kept_alive(run_id: str):
    """Tag a run that outlives any one process (a sweep's parent, reopened by each resume) with this process and
    renew its heartbeat while the body runs, as tracked_run does for its own runs: liveness can then tell it apart
    from one whose process died."""
    MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])
    heartbeat = _Heartbeat()
    heartbeat.start(run_id)
    try:
        yield
    finally:
        heartbeat.stop()


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


def tag_report_path(path: Path) -> Path:
    """The report file's absolute path, also tagged (REPORT_PATH) on the report run this process logged last: how a
    pipeline, whose report stage ran in another process and folder, finds and prints it."""
    path, logged = Path(path).resolve(), mlflow.last_active_run()
    if logged is not None and logged.data.tags.get(ROLE) == REPORT:
        MlflowClient().set_tag(logged.info.run_id, REPORT_PATH, str(path))
    return path
