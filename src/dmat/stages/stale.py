"""Runs left RUNNING by a process that is gone (kill -9, a crashed machine, a stopped container):
finding them and marking them KILLED, so they can be resumed (`dmat runs --stale --mark-killed`).

Which process is gone is dmat.tracking.liveness's answer. A sweep trial's run (or its evaluation's) also left its
Optuna trial RUNNING: that trial is failed in the study's storage, as a next worker of the study would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.config.study import STORAGE_ENV
from dmat.errors import DmatError
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
    """Mark runs KILLED (with an end time), as Ctrl-C would have: they can then be resumed. The sweep trials they
    ran are failed first: one that cannot be is one line, with nothing marked, so the same command can be rerun."""
    for study_name, number in sorted({trial for run in runs if (trial := trial_of(run.run_id))}):
        fail_trial(study_name, number)
    client = MlflowClient()
    for run in runs:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))


def trial_of(run_id: str) -> tuple[str, int] | None:
    """The sweep trial (study name, trial number) a run trained or evaluated the student of, if any."""
    tags = tracking.get_run(run_id).data.tags
    if tracking.TRIAL not in tags and tags.get(tracking.MODEL_RUN_ID):
        tags = tracking.get_run(tags[tracking.MODEL_RUN_ID]).data.tags
    return (tags[tracking.STUDY_NAME], int(tags[tracking.TRIAL])) if tracking.TRIAL in tags else None


def fail_trial(study_name: str, number: int) -> None:
    """Fail a sweep trial left RUNNING in its study's Optuna storage: $DMAT_OPTUNA_STORAGE, else the URL the sweep
    logged (without its password)."""
    import optuna  # here: `dmat runs` without a sweep does not wait for it

    sweeps = tracking.find_runs(tracking.SWEEP, {tracking.STUDY_NAME: study_name}, status=None, max_results=1)
    logged = tracking.param_value(sweeps[0].data.params, "storage") if sweeps else None
    url = os.environ.get(STORAGE_ENV) or logged
    try:
        if not url or (url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists()):
            raise LookupError("no such database here")  # opening a missing sqlite file would create an empty one
        storage = optuna.storages.RDBStorage(url)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
    except Exception as exc:  # noqa: BLE001 - any reason the storage cannot tell: said in one line
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DmatError(f"trial {number} of sweep {study_name!r} is RUNNING in its Optuna storage "
                        f"{'$' + STORAGE_ENV if os.environ.get(STORAGE_ENV) else logged}, which cannot be read here "
                        f"({why}): rerun from the folder the sweep ran in, or set {STORAGE_ENV} to its URL; "
                        "nothing was marked") from None
    if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
