"""Runs left RUNNING by a process that is gone (kill -9, a crashed machine, a stopped container):
finding them and marking them KILLED, so they can be resumed (`dmat runs --stale --mark-killed`).

Which process is gone is dmat.tracking.liveness's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.tracking.liveness import STALE_MINUTES, why_stale


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
