"""Stages run where the executor puts them: local workers with their share of threads, or Ray tasks."""

from __future__ import annotations

import os
import shutil
import tempfile

import mlflow
import pytest
from click.testing import CliRunner

from dmat.cli.main import cli
from dmat.study.executor import LocalExecutor, spawn_environment

from test_pipeline import TINY_PIPELINE


def _environment(env):
    return {name: os.environ.get(name) for name in env}


def test_a_stage_starts_with_its_slots_threads_and_the_environment_is_restored():
    before = os.environ.get("OMP_NUM_THREADS")
    seen = LocalExecutor(2).run(lambda env: env)
    assert seen["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) and seen["DMAT_WORKER"] in ("0", "1")
    with spawn_environment(seen):
        assert _environment(seen) == seen  # what the stage process copies when it starts
    assert os.environ.get("OMP_NUM_THREADS") == before


def _models_once(runs):
    finished = runs[runs["status"] == "FINISHED"]
    counts = finished["tags.dmat.role"].value_counts().to_dict()
    assert counts == {"pipeline": 1, "teacher": 1, "student": 2, "feature-extractor": 1, "evaluation": 3, "cost": 1,
                      "report": 1, "students-loop": 1}
    for run_id in finished[finished["tags.dmat.role"].isin(["teacher", "student"])]["run_id"]:
        history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val_loss")
        epochs = [m.step for m in history]
        assert len(epochs) == len(set(epochs)), f"run {run_id} logged an epoch twice: {epochs}"


@pytest.mark.slow
def test_two_local_workers_run_the_study_with_every_model_once(store):
    result = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE, "--workers", "2", "--reuse-any-commit", "true"])
    assert result.exit_code == 0, result.output + str(result.exception)
    runs = mlflow.search_runs(search_all_experiments=True)
    _models_once(runs)
    [pipeline] = runs[runs["tags.dmat.role"] == "pipeline"]["run_id"]
    assert mlflow.get_run(pipeline).data.params["workers"] == "2"
    workers = runs[runs["tags.mlflow.parentRunId"] == pipeline]["tags.dmat.worker"].dropna()
    assert set(workers) <= {"0", "1"} and len(workers) >= 3  # every stage ran in a slot and says which


@pytest.mark.slow
def test_a_tiny_study_on_a_local_ray_instance_runs_every_model_once(store, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dmat[ray]' (make test installs it)")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    try:
        result = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE, "--executor", "ray", "--reuse-any-commit",
                                          "true"])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.exit_code == 0, result.output + str(result.exception)
    runs = mlflow.search_runs(search_all_experiments=True)
    _models_once(runs)
    [pipeline] = runs[runs["tags.dmat.role"] == "pipeline"]["run_id"]
    assert mlflow.get_run(pipeline).data.params["executor"] == "ray"
