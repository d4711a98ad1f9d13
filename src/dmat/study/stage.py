"""One stage of a study: an `mlflow run` of this project's own entry point (env_manager="local"), or the finished
run that already did it.

As in mlflow/examples `multistep_workflow`, a stage whose entry point already has a FINISHED run with the same
parameters, run at the same git commit from a clean checkout, is reused instead of run again (params alone miss
changed code), so a rerun after a crash continues where it stopped. A student trained in a shared loop is tagged
with the `distill` stage it stands for (STAGE_KEY) and is reused like one trained alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import psutil
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient

from dmat import runtime, tracking
from dmat.stages import resume
from dmat.study import executor
from dmat.tracking import lineage
from dmat.tracking.params import as_stage_logs

PROJECT_DIR = Path(__file__).resolve().parents[3]  # the checkout: src/dmat/study/stage.py
STAGE_KEY = "dmat.stage_key"  # on a run trained in a shared loop: the stage (entry point, parameters) it stands for


@dataclass
class Stage:
    entry_point: str
    label: str
    run_id: str | None = None
    reused: bool = False
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PipelineResult:
    run_id: str
    stages: list[Stage] = field(default_factory=list)
    seconds: float = 0.0  # the pipeline's wall time

    @property
    def failed(self) -> list[Stage]:
        return [s for s in self.stages if s.error]


def find_finished(entry_point: str, parameters: dict[str, str], experiment_id: str,
                  same_code: dict[str, str] | None = None) -> str | None:
    """The newest FINISHED run of an entry point with exactly these parameter values, as `mlflow run` stored them
    (and `same_code` tags: the git commit, see lineage.Source), if any."""
    runs = tracking.find_runs(None, {tracking.ENTRY_POINT: entry_point, **(same_code or {})},
                              params=as_stage_logs(parameters), max_results=1, experiment_ids=[experiment_id])
    if not runs:  # trained in a shared loop, standing for this stage
        runs = tracking.find_runs(None, {STAGE_KEY: stage_key(entry_point, parameters), **(same_code or {})},
                                  max_results=1, experiment_ids=[experiment_id])
    return runs[0].info.run_id if runs else None


def encoded(parameters: dict) -> dict[str, str]:
    """Stage parameters as `mlflow run -P` passes and logs them."""
    return {k: tracking.encode_param(v) for k, v in parameters.items()}


def stage_key(entry_point: str, parameters: dict[str, str]) -> str:
    """A stage's identity as one tag value: its entry point and encoded parameters, hashed."""
    text = json.dumps([entry_point, sorted(parameters.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def run_stage(stage: Stage, parameters: dict, experiment_id: str, parent_run_id: str, reuse: bool = True,
              source: lineage.Source = lineage.Source(None), env: dict[str, str] | None = None) -> Stage:
    """Reuse a finished run with the same parameters and code (when `reuse`), or run the entry point now, its
    process started with `env` (its worker's threads and GPU) on top of this one's environment."""
    parameters = encoded(parameters)
    start = time.perf_counter()
    reuse = reuse and source.reuse_tags is not None  # uncommitted changes: no finished stage ran this code
    stage.run_id = find_finished(stage.entry_point, parameters, experiment_id, source.reuse_tags) if reuse else None
    stopped = stopped_training(stage.entry_point, parameters, experiment_id, source) if reuse and not stage.run_id else None
    if stopped and stopped.info.status == "FINISHED":  # finished where no pipeline saw it (an orphaned stage)
        stage.run_id = stopped.info.run_id
    stage.reused = stage.run_id is not None
    if not stage.reused and STOPPING.is_set():
        stage.error = "not started: the pipeline was stopped"
    elif stopped and not stage.reused:  # continue it from its last.pt, in the same run
        stage.run_id = stopped.info.run_id
        _tag_started(stage, parent_run_id, source)
        stage.error = _wait(_Resumed(stopped, env))
    elif not stage.reused:
        try:
            # storage_dir: MLflow makes a folder there per run (for `path` parameters, which dmat has none of),
            # else in the temp folder, where it would stay; removed once the stage is over
            with _storage_folder() as storage:
                # the stage's `mlflow run` gets the experiment by id: a name in the environment too would be refused;
                # it stops (its run KILLED, resumable) if this process dies
                with executor.spawn_environment({**(env or {}), "MLFLOW_EXPERIMENT_NAME": None,
                                                 **runtime.watched_by_me()}):
                    submitted = mlflow.projects.run(str(PROJECT_DIR), entry_point=stage.entry_point,
                                                    parameters=parameters, experiment_id=experiment_id,
                                                    env_manager="local", synchronous=False, storage_dir=storage)
                stage.run_id = submitted.run_id
                _tag_started(stage, parent_run_id, source)  # now: a stage stopped half-way is tied to the pipeline and named too
                stage.error = _wait(submitted)
        except ExecutionException as exc:
            stage.error = str(exc).splitlines()[0]
    stage.seconds = time.perf_counter() - start
    return stage


def _storage_folder() -> tempfile.TemporaryDirectory:
    """A temp folder for a stage's `mlflow run`, named by this process's pid: one left by a process killed outright
    (kill -9, a Ray worker lost) is removed by the next stage started on this machine."""
    for folder in Path(tempfile.gettempdir()).glob("dmat-stage-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"dmat-stage-{os.getpid()}-")


def _tag_started(stage: Stage, parent_run_id: str, source: lineage.Source) -> None:
    """Tie a started stage's run to the pipeline run, with the code it runs: nested under it, but for a model's run
    (the teacher, a student), which is launched by it (tracking.LAUNCHED_BY) and stays a row of its own in the MLflow
    UI; a students loop (whose run its process does not name) gets its label as name and its role."""
    client = MlflowClient()
    model = stage.entry_point in TRAINS
    tags = {tracking.LAUNCHED_BY if model else tracking.PARENT_RUN_ID: parent_run_id, **source.run_tags}
    if stage.entry_point == "students":
        tags |= {tracking.RUN_NAME: stage.label.replace("_", "-"), tracking.ROLE: tracking.STUDENTS_LOOP}
    for key, value in tags.items():
        client.set_tag(stage.run_id, key, value)
    if model and tracking.PARENT_RUN_ID in client.get_run(stage.run_id).data.tags:  # `mlflow run` nests it
        client.delete_tag(stage.run_id, tracking.PARENT_RUN_ID)


TRAINS = {"teacher": tracking.TEACHER, "distill": tracking.STUDENT}  # entry point -> the role of the run it trains


def stopped_training(entry_point: str, parameters: dict[str, str], experiment_id: str,
                     source: lineage.Source) -> Run | None:
    """A run of this training stage (same parameters and commit) that a rerun continues rather than trains again:
    one stopped by a signal with a last.pt (a stopped pipeline, or a Ray task lost with its node), or one that
    FINISHED untagged. A run of it still alive elsewhere is waited for first; one whose process is gone counts as KILLED."""
    if entry_point not in TRAINS:
        return None
    same_commit = {k: v for k, v in (source.reuse_tags or {}).items() if k == tracking.GIT_COMMIT}
    for run in tracking.find_runs(TRAINS[entry_point], same_commit, status=None, params=as_stage_logs(parameters),
                                  max_results=20, experiment_ids=[experiment_id]):
        run = resume.settled(run)
        if run.info.status == "FINISHED" or resume.continuable(run):
            return run
    return None


class _Resumed:
    """`dmat <command> --resume RUN_ID` for a stopped training stage, with the interface of MLflow's LocalSubmittedRun
    that _wait and stop_stages use (run_id, command_proc, wait, cancel)."""

    def __init__(self, run: Run, env: dict[str, str] | None):
        self.run_id = run.info.run_id
        command = tracking.COMMAND_OF[run.data.tags[tracking.ROLE]]
        stage_env = {**os.environ, **(env or {}), **runtime.watched_by_me()}
        stage_env.pop("MLFLOW_EXPERIMENT_NAME", None)  # a resumed run stays in its own experiment
        self.command_proc = subprocess.Popen([sys.executable, "-m", "dmat", command, "--resume", self.run_id],
                                             env=stage_env)

    def wait(self) -> bool:
        return self.command_proc.wait() == 0

    def cancel(self) -> None:
        self.command_proc.terminate()
        self.command_proc.wait()


STOPPING = threading.Event()  # set by stop_stages: no further stage starts in this process
_LIVE: dict = {}  # run id -> stage process this process started and that still run: stopped with the pipeline


def _wait(submitted) -> str | None:
    """Wait for a stage process; None if it succeeded, else what became of its run. A run its process left
    RUNNING (it died before it could end it) is ended FAILED, as `mlflow run` does, or KILLED when a stop signal
    ended it (the pipeline stopping, or a Ctrl-C that reached the stage too): resumable, as the stage would have."""
    _LIVE[submitted.run_id] = submitted
    try:
        ok = submitted.wait()
    finally:
        _LIVE.pop(submitted.run_id, None)
    status = tracking.get_run(submitted.run_id).info.status
    if status == "RUNNING":
        status = "FINISHED" if ok else "KILLED" if STOPPING.is_set() or _signalled(submitted) else "FAILED"
        MlflowClient().set_terminated(submitted.run_id, status)
    return None if ok else f"its process ended and its run is {status}"


def _signalled(submitted) -> bool:
    """Whether a stage's process was ended by a stop signal: killed by it, or exited as dmat does on one (128 + it)."""
    code = submitted.command_proc.returncode
    return code is not None and (-code if code < 0 else code - 128) in runtime.STOP_SIGNALS


def stop_stages(pipeline_run_id: str | None = None) -> None:
    """Stop every stage process still running (SIGTERM to all at once: each marks its run KILLED and keeps its last
    checkpoint), then wait for them. `pipeline_run_id`, the run of a pipeline stopped by a signal, is marked KILLED
    first: a stop that turns into SIGKILL while the stages save (docker stop, systemd, a second kill) leaves it
    KILLED, not RUNNING."""
    STOPPING.set()
    if pipeline_run_id:
        MlflowClient().set_terminated(pipeline_run_id, "KILLED")
    stages = list(_LIVE.values())
    below = [child for submitted in stages for child in _children(submitted.command_proc.pid)]
    for child in below:  # `mlflow run` starts the stage's command below its own process: each is told directly
        with contextlib.suppress(psutil.Error):  # (cancel() below signals nothing once its own process has ended)
            child.terminate()
    for submitted in stages:
        with contextlib.suppress(OSError):
            submitted.command_proc.terminate()
    for submitted in stages:
        submitted.cancel()  # waits for the process it started
    psutil.wait_procs(below, timeout=120)  # the stages saving their last epoch: the pipeline speaks last
    for submitted in stages:
        if tracking.get_run(submitted.run_id).info.status in ("RUNNING", "FAILED"):  # the process did not say KILLED
            MlflowClient().set_terminated(submitted.run_id, "KILLED")


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
