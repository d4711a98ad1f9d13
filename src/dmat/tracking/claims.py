"""Claims on work that several processes may start at once (two `dmat evaluate --all` on one store, parallel
pipeline stages, Ray tasks on several machines): the run that does the work is the claim.

A process creates its run tagged with the work's key (CLAIM), then asks which run of that key holds the work:
the earliest finished one, else the earliest still alive. If that is not its own run, another process has the
work: tracking.tracked_run deletes its own run (empty so far) and raises ClaimedElsewhere, and the caller skips the
work or waits for it. Only the tracking store is shared, so this holds across machines.

MLflow offers no atomic "create if absent", and a run's start time is taken by its client before the store has
it: a claimant slow to reach the store (two processes on two busy cores) can start earlier yet arrive after a
rival has checked and begun. So the question is asked again when the work is done, before the run is marked
FINISHED: the rival that began second then sees the earlier claim, discards its run and uses the holder's result.
Work may then have been done twice, but it is recorded once.
"""

from __future__ import annotations

import hashlib
import json
import time

from mlflow.entities import RunStatus

from dmat.tracking.liveness import why_stale
from dmat.tracking.search import find_runs
from dmat.tracking.store import get_run
from dmat.tracking.vocabulary import CLAIM

RUNNING, FINISHED = RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.FINISHED)
WAIT_SECONDS = 2.0


def claim_key(*work) -> str:
    """The tag value that names one piece of work (e.g. role, model run id, settings)."""
    return hashlib.sha256(json.dumps(work, default=str).encode()).hexdigest()[:32]


def earlier_claim(run_id: str, key: str) -> str | None:
    """The run that holds the work of `key` if it is not `run_id`: the earliest finished run tagged with it, else
    the earliest live one (ties by run id). None when `run_id` holds it. A finished run wins over an earlier live
    one, so that work already recorded is never recorded again by a claimant that reached the store late."""
    tagged = find_runs(None, {CLAIM: key}, status=None)
    finished = [run for run in tagged if run.info.status == FINISHED and run.info.run_id != run_id]
    live = [run for run in tagged if run.info.status == RUNNING and not why_stale(run)] + [get_run(run_id)]
    first = min(finished or live, key=lambda run: (run.info.start_time, run.info.run_id))
    return None if first.info.run_id == run_id else first.info.run_id


class ClaimedElsewhere(Exception):
    """Raised by tracked_run(claim=...) when another run holds the work; `run_id` is that run."""

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id} already does this work")
        self.run_id = run_id


def wait_for(run_id: str) -> bool:
    """Wait while another process's claimed run is alive; whether it FINISHED."""
    while (run := get_run(run_id)).info.status == RUNNING and not why_stale(run):
        time.sleep(WAIT_SECONDS)
    return run.info.status == FINISHED
