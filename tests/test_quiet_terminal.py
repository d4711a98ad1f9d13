"""What `dmat pipeline` leaves on screen: no MLflow INFO line (in its own process or the stages it starts) unless
--verbose, and last the total time, the study's answer, the report as a file:// URL and how to open the MLflow UI.
The stages are a stand-in (pipeline.walk: MLflow's chatter, a stage process, a report run, in miniature); the
pipeline run around them, the CLI's printing, MLflow's logging and the stage processes' environment are real."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from dmat import tracking
from dmat.cli.main import cli
from dmat.study import ending, pipeline
from dmat.study.stage import PROJECT_DIR, Stage

ANSWER = "No smaller student came within 10% of the teacher's KID (quick study: models still improving)."
RUNNING_COMMAND = "=== Running command 'dmat teacher --epochs 12' in run with ID 'abc' ==="
# a stage process: imports MLflow (which reads MLFLOW_LOGGING_LEVEL then), logs as `mlflow run` does, and runs a
# dmat command that prints its result line on standard output
STAGE = (f"import logging, mlflow; logging.getLogger('mlflow.projects').info({RUNNING_COMMAND!r}); "
         "from dmat.cli.main import cli; cli(['runs'])")


def _fake_study(tmp_path: Path, answer: str | None, seen: dict):
    """pipeline.walk's stand-in: MLflow INFO lines here and in a process it starts, a reused stage, a report run."""
    report = tmp_path / "reports" / "20270101-000000" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")

    def walk(study):
        logging.getLogger("mlflow.projects").info(RUNNING_COMMAND)
        seen["stage"] = subprocess.run([sys.executable, "-c", STAGE], capture_output=True, text=True, timeout=300)
        with tracking.tracked_run("report-x", {tracking.ROLE: tracking.REPORT}, active=False) as logged:
            tags = {tracking.REPORT_PATH: str(report), **({tracking.ANSWER: answer} if answer else {})}
            for key, value in tags.items():
                mlflow.MlflowClient().set_tag(logged.info.run_id, key, value)
        study.result.stages += [Stage("teacher", "teacher", "a" * 32, reused=True),
                                Stage("report", "report", logged.info.run_id, seconds=2.0)]
    return walk, report


@pytest.fixture
def mlflow_logger_kept():
    """The CLI runs in this process: MLflow's logger level is put back after, whatever the test did."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
def test_the_pipeline_ends_with_time_answer_report_and_ui_and_no_mlflow_info_unless_verbose(
        store, tmp_path, monkeypatch, mlflow_logger_kept, verbose):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    seen = {}
    fake, report = _fake_study(tmp_path, ANSWER, seen)
    monkeypatch.setattr(pipeline, "walk", fake)
    result = CliRunner().invoke(cli, ["pipeline", "--preset", "quick", *(["--verbose"] if verbose else [])])
    assert result.exit_code == 0, result.output + repr(result.exception)
    stage_said = seen["stage"].stdout + seen["stage"].stderr
    assert seen["stage"].returncode == 0, stage_said
    if verbose:  # the same lines are there to be silenced: the test would see them
        assert "Running command" in result.output and "INFO mlflow.projects" in stage_said
        assert "pipeline-quick-digits" in seen["stage"].stdout  # `dmat runs` lists the running pipeline run
        return
    assert "INFO" not in result.output and "Running command" not in result.output, result.output
    assert stage_said == "", stage_said  # nor in the processes it starts, whose result line the pipeline prints
    assert "Warning" not in result.output
    experiment_id = mlflow.get_experiment_by_name("dmat-test").experiment_id
    lines = result.stdout.splitlines()  # stdout: the progress bar's own last newline goes to stderr
    assert re.fullmatch(r"total time \d+ s \(2 stages: 1 run, 1 reused\)", lines[-5]), lines[-5]
    assert lines[-4] == f"answer: {ANSWER}"
    assert lines[-3] == f"report: {report.resolve().as_uri()}" and lines[-3].startswith("report: file:///")
    # the store of this test is not the checkout's mlflow.db, which `make ui` serves: the command names it
    assert lines[-2] == (f"runs:   mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db --host "
                         f"127.0.0.1 --port 5000, then open "
                         f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                         "&searchFilter=tags.%60dmat.evaluation_run_id%60%20IS%20NOT%20NULL")
    assert lines[-1].strip().startswith("(filtered by tags.`dmat.evaluation_run_id` IS NOT NULL: teacher and students")


def test_without_an_answer_tag_the_answer_line_is_left_out(store, tmp_path, monkeypatch, mlflow_logger_kept):
    fake, report = _fake_study(tmp_path, None, {})
    monkeypatch.setattr(pipeline, "walk", fake)
    result = CliRunner().invoke(cli, ["pipeline"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    last = result.stdout.splitlines()[-4:]
    assert last[0].startswith("total time ") and last[1] == f"report: {report.resolve().as_uri()}"
    assert not any(line.startswith("answer:") for line in result.stdout.splitlines())


def test_a_user_set_mlflow_logging_level_wins(monkeypatch, mlflow_logger_kept):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "debug")
    with tracking.mlflow_chatter(verbose=False) as level:
        assert level == "DEBUG" and logging.getLogger("mlflow").level == logging.DEBUG
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    with tracking.mlflow_chatter(verbose=False):
        assert logging.getLogger("mlflow").level == logging.WARNING
    import os

    assert "MLFLOW_LOGGING_LEVEL" not in os.environ  # put back as found


def test_the_ui_line_says_make_ui_for_the_checkouts_store_and_the_server_for_a_server(monkeypatch):
    monkeypatch.setattr(tracking, "tracking_uri", lambda: f"sqlite:///{PROJECT_DIR}/mlflow.db")
    monkeypatch.chdir(PROJECT_DIR)
    assert ending.ui_command() == "make ui"
    assert ending.runs_view("3").startswith("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&")
    monkeypatch.chdir(PROJECT_DIR / "src")
    assert ending.ui_command() == f"make -C {PROJECT_DIR} ui"
    monkeypatch.setattr(tracking, "tracking_uri", lambda: "http://mlflow.example:8080/")
    assert ending.ui_command() == "the tracking server's UI (http://mlflow.example:8080/)"
    assert ending.runs_view("3").startswith("http://mlflow.example:8080/#/experiments/3/runs?workflowType=")
    assert ending.duration(3725) == "1 h 02 min" and ending.duration(845) == "14 min 05 s"


def test_the_report_command_tags_its_run_with_the_reports_absolute_path(store, tmp_path, monkeypatch):
    written = tmp_path / "out" / "report.html"

    def build_report(experiment=None, sections=(), full_mse=False, out_dir=None):
        written.parent.mkdir()
        written.write_text("<html></html>")
        with tracking.tracked_run("report-x", {tracking.ROLE: tracking.REPORT}, experiment):
            pass
        return Path("out/report.html")  # relative, as build_report returns it

    monkeypatch.setattr("dmat.report.build_report", build_report)
    result = CliRunner().invoke(cli, ["report"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.splitlines()[-1] == f"report {written.resolve()}"
    [run] = tracking.find_runs(tracking.REPORT)
    assert run.data.tags[tracking.REPORT_PATH] == str(written.resolve())
