"""Runs left RUNNING by a process that is gone (kill -9, a crashed machine, a stopped container):
finding them and marking them KILLED, so they can be resumed (`dmat runs --stale --mark-killed`).

`tracking.tracked_run` tags every run with its host, pid and the process's start time, and renews a
heartbeat tag every minute while the process lives. A RUNNING run is stale when its process on this
host no longer exists (or its pid now belongs to a later process), or, for a run on another host (or
one older than these tags), when its last sign of life is older than `minutes`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dmat import tracking

STALE_MINUTES = 10.0  # ten missed heartbeats


@dataclass
class RunningRun:
    run_id: str
    role: str
    name: str
    reason: str | None  # why it is stale; None while its process lives
    where: str = ""  # host:pid, and the pipeline worker it runs in


def where(tags: dict) -> str:
    """Where a run's process runs: host:pid, and its worker slot (or Ray node) when a pipeline started it."""
    worker = f" worker {tags[tracking.OWNER_WORKER]}" if tags.get(tracking.OWNER_WORKER) else ""
    return f"{tags.get(tracking.OWNER_HOST, '?')}:{tags.get(tracking.OWNER_PID, '?')}{worker}"


def why_stale(run, minutes: float = STALE_MINUTES) -> str | None:
    """Why a RUNNING run's process is taken to be gone, or None if it may still be running."""
    tags = run.data.tags
    host, pid = tags.get(tracking.OWNER_HOST), tags.get(tracking.OWNER_PID)
    if host == socket.gethostname() and pid:
        gone = _process_gone(int(pid), tags.get(tracking.OWNER_STARTED))
        return f"its process {pid} on {host} is gone" if gone else None
    idle = (time.time() - float(tags.get(tracking.HEARTBEAT) or run.info.start_time / 1000)) / 60
    if idle < minutes:
        return None
    return f"no heartbeat for {idle:.0f} minute(s) (process {pid or '?'} on {host or 'an unknown host'})"


def _process_gone(pid: int, started: str | None) -> bool:
    try:
        process = psutil.Process(pid)
        reused = started is not None and abs(process.create_time() - float(started)) > 1.0
        return reused or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def running_runs(minutes: float = STALE_MINUTES) -> list[RunningRun]:
    """Every dmat run marked RUNNING in the store, newest first, with why it is stale (if it is)."""
    runs = tracking.find_runs(None, status=RunStatus.to_string(RunStatus.RUNNING))
    return [RunningRun(r.info.run_id, r.data.tags[tracking.ROLE], r.data.tags.get(tracking.RUN_NAME, ""),
                       why_stale(r, minutes), where(r.data.tags)) for r in runs if tracking.ROLE in r.data.tags]


def mark_killed(runs: list[RunningRun]) -> None:
    """Mark runs KILLED (with an end time), as Ctrl-C would have: they can then be resumed."""
    client = MlflowClient()
    for run in runs:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))
