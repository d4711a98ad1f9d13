"""The whole study in one command: every stage is an MLflow project run, and reruns reuse them."""

import os
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from dmat import tracking
from dmat.cli import cli

TINY_PIPELINE = ["--sizes", "0.5", "--image-size", "8", "--teacher-epochs", "1", "--student-epochs", "1",
                 "--base-channels", "8", "--timesteps", "20", "--num-samples", "80", "--steps", "4",
                 "--device", "cpu"]


def _roles() -> dict[str, int]:
    runs = mlflow.search_runs(search_all_experiments=True)
    return runs["tags.dmat.role"].value_counts().to_dict()


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_reuses_them(store, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    first = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE])
    assert first.exit_code == 0, first.output + str(first.exception)
    after_first = _roles()
    assert after_first == {"pipeline": 1, "teacher": 1, "student": 1, "feature-extractor": 1, "evaluation": 2,
                           "report": 1}

    second = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE])
    assert second.exit_code == 0, second.output + str(second.exception)
    after_second = _roles()
    # nothing is trained or evaluated again: one more pipeline run and a fresh report only
    assert after_second == {**after_first, "pipeline": 2, "report": 2}
    summary = [line.split() for line in second.output.splitlines() if line.split()[2:3] == ["run"]]
    assert [(words[0], words[1]) for words in summary][:4] == [
        ("teacher", "reused"), ("student_distill_0.5", "reused"), ("evaluate_teacher", "reused"),
        ("evaluate_student_distill_0.5", "reused")]

    runs = mlflow.search_runs(search_all_experiments=True)
    pipelines = runs[runs["tags.dmat.role"] == "pipeline"].sort_values("start_time")
    assert list(pipelines["metrics.stages_reused"]) == [0, 4]
    first_pipeline = pipelines.iloc[0]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == first_pipeline]
    assert set(nested["tags.dmat.role"]) == {"teacher", "student", "evaluation", "report"}
    assert all(nested["status"] == "FINISHED")
    student = runs[runs["tags.dmat.role"] == "student"].iloc[0]
    assert student["tags.dmat.teacher_run_id"] == runs[runs["tags.dmat.role"] == "teacher"].iloc[0]["run_id"]


@pytest.mark.parametrize("args,message", [
    (["--sizes", "0 0.5"], "size factor must be between"),
    (["--methods", "magic"], "methods must be among distill, scratch"),
    (["--teacher-epochs", "0"], "teacher-epochs must be a positive integer"),
])
def test_pipeline_bad_input_is_one_line_and_writes_nothing(store, args, message):
    result = CliRunner().invoke(cli, ["pipeline", *args])
    assert result.exit_code == 2 and message in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty
