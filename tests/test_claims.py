"""Claims on work (tracking.claims through tracked_run): one run holds a piece of work, whichever process reached
the store first or late; what the loser logged is discarded, never recorded beside the holder's."""

import socket
import time

import mlflow
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dmat.tracking import claims
from dmat.tracking.runs import tracked_run
from dmat.tracking.vocabulary import OWNER_HOST, OWNER_PID

KEY = claims.claim_key("evaluation", "some-model", {"steps": 10})


def _rival(start_offset_ms: int, anchor_ms: int, finished: bool = False) -> str:
    """Another process's claim on KEY whose client took its start time `start_offset_ms` from `anchor_ms`."""
    client = MlflowClient()
    run = client.create_run(mlflow.set_experiment("dmat-test").experiment_id, start_time=anchor_ms + start_offset_ms,
                            tags={"dmat.claim": KEY})
    if finished:
        client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _active_runs() -> dict[str, str]:
    return {run.info.run_id: run.info.status for run in MlflowClient().search_runs(
        [mlflow.set_experiment("dmat-test").experiment_id])}


def test_a_lone_claim_holds_its_work_and_finishes(store):
    with tracked_run("work", {}, "dmat-test", claim=KEY) as run:
        mlflow.log_metric("fid", 1.0)
    assert _active_runs() == {run.info.run_id: "FINISHED"}
    assert claims.earlier_claim(run.info.run_id, KEY) is None


def test_a_claim_that_reached_the_store_late_takes_the_work_from_one_that_began_after_it(store):
    """Two busy processes: the rival's client took the earlier start time, but its run reached the store only after
    this one had checked and begun. When this one's work is done it sees the rival and discards its own run."""
    with pytest.raises(claims.ClaimedElsewhere) as held:
        with tracked_run("work", {}, "dmat-test", claim=KEY) as run:
            rival = _rival(-500, run.info.start_time)
            mlflow.log_metric("fid", 1.0)
    assert held.value.run_id == rival
    assert _active_runs() == {rival: RunStatus.to_string(RunStatus.RUNNING)}  # this one's run and metric are gone
    assert MlflowClient().get_run(run.info.run_id).info.lifecycle_stage == "deleted"


def test_a_finished_claim_wins_over_an_earlier_one_still_running(store):
    """Work already recorded is never recorded again, even by a claimant whose client took an earlier time."""
    with tracked_run("work", {}, "dmat-test", claim=KEY) as run:
        pass
    late = _rival(-1000, run.info.start_time)
    assert claims.earlier_claim(late, KEY) == run.info.run_id
    with pytest.raises(claims.ClaimedElsewhere) as held:
        with tracked_run("again", {}, "dmat-test", claim=KEY):
            pytest.fail("the work was done already: the body must not run")
    assert held.value.run_id == run.info.run_id


def test_a_claim_left_by_a_dead_process_holds_nothing(store):
    dead = _rival(-1000, int(time.time() * 1000))
    MlflowClient().set_tag(dead, OWNER_HOST, socket.gethostname())
    MlflowClient().set_tag(dead, OWNER_PID, "999999999")  # no such process
    with tracked_run("work", {}, "dmat-test", claim=KEY) as run:
        pass
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"
