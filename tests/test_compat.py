"""A store written by dmat before the structure change (commit 085adac, tests/data/store-085adac.tar.gz:
a tiny teacher and student with their evaluations, and a teacher KILLED after epoch 1) still loads,
resumes, counts as evaluated and appears in the report."""

from __future__ import annotations

import sqlite3
import tarfile
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.cli.main import cli
from dmat.evaluation.evaluate import evaluate_all
from dmat.report.query import load_study

ARCHIVE = Path(__file__).parent / "data" / "store-085adac.tar.gz"
WRITTEN_AT = "/tmp/oldstore"  # where the store was written; artifact paths are absolute in sqlite
TEACHER, STUDENT, KILLED = "85aad04de7ac4958b2febe14ee49ac90", "7d7f418ab6ef4036a2278b305d3144d5", "283e4c8689a745c7bc106c8fe299bd2a"


@pytest.fixture
def old_store(tmp_path, monkeypatch) -> str:
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the store moved: so did its artifacts
        db.execute("update experiments set artifact_location = replace(artifact_location, ?, ?)", (WRITTEN_AT, str(tmp_path)))
        db.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?)", (WRITTEN_AT, str(tmp_path)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "dmat")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def test_old_models_load_and_count_as_evaluated(old_store):
    teacher, student = tracking.load_model(TEACHER), tracking.load_model(STUDENT)
    assert (teacher.role, student.role) == ("teacher", "student")
    assert student.model.config.size_factor == 0.5 and student.diffusion.config == teacher.diffusion.config
    assert evaluate_all(num_samples=100, steps="4", num_trajectories=4, eps_timesteps=4, batch_size=100,
                        device="cpu") == []


def test_old_killed_teacher_resumes_in_its_own_run(old_store):
    result = CliRunner().invoke(cli, ["teacher", "--resume", KILLED, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(KILLED)
    assert run.info.status == "FINISHED"
    assert [m.step for m in MlflowClient().get_metric_history(KILLED, "val_loss")] == [1, 2]
    assert run.data.params["seed"] == "1" and run.data.params["base_channels"] == "8"


def test_old_study_appears_in_the_report(old_store):
    study = load_study()
    assert set(study.evaluations.model_run_id) == {TEACHER, STUDENT}
    assert KILLED in set(study.problems.run_id)  # killed: listed as a problem, not dropped
    result = CliRunner().invoke(cli, ["report", "--all", "--out-dir", "report"])
    assert result.exit_code == 0, result.output
    assert "0.5" in (Path(old_store.removeprefix("sqlite:///")).parent / "report" / "report.html").read_text()
