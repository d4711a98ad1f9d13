"""Optuna sweeps: workers sharing one sqlite study, trials as nested MLflow runs, bad input."""

import os
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner

from dmat.cli import cli
from dmat.report import build_report
from dmat.report.query import load_study

TINY_SWEEP = ["--image-size", "8", "--max-epochs", "1", "--num-samples", "80", "--device", "cpu"]


@pytest.mark.slow
def test_two_workers_finish_every_trial_of_one_study(study, teacher_run_id, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = CliRunner().invoke(cli, ["sweep", "--storage", storage, "--study-name", "two", "--n-trials", "4",
                                      "--workers", "2", "--teacher-run-id", teacher_run_id, *TINY_SWEEP])
    assert result.exit_code == 0, result.output + str(result.exception)
    trials = optuna.load_study(study_name="two", storage=storage).trials
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}, [t.state.name for t in trials]

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dmat.study_name` = 'two'")
    parent = runs[runs["tags.dmat.role"] == "sweep"]
    assert len(parent) == 1 and parent.iloc[0]["status"] == "FINISHED"
    students = runs[runs["tags.dmat.role"] == "student"]
    assert sorted(students["tags.dmat.trial"].astype(int)) == [0, 1, 2, 3]
    assert set(students["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    for trial in trials:
        if trial.state.name == "COMPLETE":
            run = mlflow.get_run(trial.user_attrs["student_run_id"])
            assert float(run.data.params["size_factor"]) == pytest.approx(trial.params["size_factor"])
            evaluation = mlflow.get_run(trial.user_attrs["evaluation_run_id"])
            assert evaluation.data.metrics["fid"] == pytest.approx(trial.value)

    # the report draws each study apart from the size comparison
    study_tables = load_study()
    assert not study_tables.evaluations.model_run_id.isin(students.run_id).any()
    assert sorted(study_tables.sweep_trials.query("study_name == 'two'").trial) == [0, 1, 2, 3]
    report = build_report(sections=("summary", "sweep"), out_dir=tmp_path / "report", log_run=False)
    assert (report.parent / "figures" / "sweep_two.png").exists()


def test_zero_trials_is_refused(store):
    result = CliRunner().invoke(cli, ["sweep", "--n-trials", "0"])
    assert result.exit_code == 2 and "n-trials must be at least 1" in result.stderr


def test_unreachable_storage_is_one_line_without_the_password(store):
    result = CliRunner().invoke(cli, ["sweep", "--storage", "postgresql://me:hunter2@127.0.0.1:9/optuna"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "cannot be opened" in errors[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_existing_study_with_other_objectives_is_refused(store, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(storage=storage, study_name="s", direction="minimize")
    result = CliRunner().invoke(cli, ["sweep", "--storage", storage, "--study-name", "s", "--multi-objective"])
    assert result.exit_code == 2 and "already exists as a FID-only study" in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty
