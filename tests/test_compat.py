"""A store written by dmat before the structure change (commit 085adac, tests/data/store-085adac.tar.gz:
a tiny teacher and student with their evaluations, and a teacher KILLED after epoch 1) still loads,
resumes, counts as evaluated and appears in the report."""

from __future__ import annotations

import sqlite3
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.cli.main import cli
from dmat.config.evaluation import EvalConfig
from dmat.config.metrics import HEADLINE_SPACE, HEADLINE_SPACE_PARAM, format_value
from dmat.evaluation import pending
from dmat.evaluation.pending import still_to_evaluate
from dmat.report import build_report
from dmat.report.query import LEGACY_PROBLEM, SPACE_PROBLEM, load_study

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
    settings = dict(num_samples=100, steps="4", num_trajectories=4, eps_timesteps=4, batch_size=100, device="cpu")
    # their evaluations are found and read, but their headline KID was the classifier's (no headline_space param):
    # not like with like, so both are still to evaluate with today's headline, and with it alone
    assert set(still_to_evaluate(**settings)) == {TEACHER, STUDENT}
    old = [pending.settings_of(r.data.params) for r in tracking.find_runs(tracking.EVALUATION)]
    assert old and all(dict(zip(pending.SETTINGS, s))["headline_space"] == "classifier" for s in old)
    # and their floor was the evaluation's own 10 draws, not today's cached 100
    assert all(dict(zip(pending.SETTINGS, s))["floor_estimate"] == "the evaluation's floor_draws" for s in old)
    today = pending.settings_of(pending.wanted_settings(EvalConfig(**{**settings, "precision": "fp32"}), 4, {}))
    others = [i for i, k in enumerate(pending.SETTINGS) if k not in ("headline_space", "floor_estimate")]
    # the same in every other setting, precision fp32
    assert [[s[i] for i in others] for s in old] == [[today[i] for i in others]] * len(old)


def test_old_killed_teacher_resumes_in_its_own_run(old_store):
    result = CliRunner().invoke(cli, ["teacher", "--resume", KILLED, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(KILLED)
    assert run.info.status == "FINISHED"
    assert [m.step for m in MlflowClient().get_metric_history(KILLED, "val_loss")] == [1, 2]
    assert run.data.params["seed"] == "1" and run.data.params["base_channels"] == "8"


def test_old_study_appears_in_the_report(old_store):
    """Each old model is a row of the report's tables with the values its evaluation logged: size and latency as
    they were, its FID (from before matched sample sizes) kept apart as fid_legacy and named under problems."""
    study = load_study()
    assert set(study.evaluations.model_run_id) == {TEACHER, STUDENT}
    assert KILLED in set(study.problems.run_id)  # killed: listed as a problem, not dropped
    result = CliRunner().invoke(cli, ["report", "--all", "--out-dir", "report"])
    assert result.exit_code == 0, result.output
    out = Path(old_store.removeprefix("sqlite:///")).parent / "report"
    logged = {run.data.tags[tracking.MODEL_RUN_ID]: run.data.metrics for run in tracking.find_runs(tracking.EVALUATION)}
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("method")
    evaluations = pd.read_csv(out / "tables" / "evaluations.csv").set_index("model_run_id")
    html = (out / "report.html").read_text()
    for model, method, size in ((TEACHER, "teacher", 1.0), (STUDENT, "distill", 0.5)):
        row, metrics = summary.loc[method], logged[model]
        assert (row.size_factor, row.n) == (size, 1)
        assert row.num_parameters == metrics["num_parameters"]
        assert row.latency_ms_per_image == pytest.approx(metrics["latency_ms_per_image"])
        assert evaluations.loc[model, "fid_legacy"] == pytest.approx(metrics["fid"])
        # never mixed with matched-N FIDs (a column no evaluation has is not written at all)
        assert pd.isna(row.get("fid")) and pd.isna(evaluations.loc[model].get("fid"))
        assert format_value("num_parameters", metrics["num_parameters"]) in html  # the summary table shows its size
        assert LEGACY_PROBLEM.format(model=model) in html
    problems = pd.read_csv(out / "tables" / "problems.csv").set_index("run_id")
    assert problems.loc[KILLED, "problem"] == "killed"


def test_evaluations_of_another_headline_space_are_kept_apart(old_store, tmp_path):
    """An evaluation at matched N but without headline_space (its plain kid/fid are the classifier's) is never shown
    beside one in today's headline space: its scores move to kid_classifier etc. and it is named under problems."""
    client = MlflowClient()
    runs = {r.data.tags[tracking.MODEL_RUN_ID]: r for r in tracking.find_runs(tracking.EVALUATION)}
    for model, kid in ((TEACHER, 0.05), (STUDENT, 0.07)):  # both at matched N, as after the matched-N change
        client.log_metric(runs[model].info.run_id, "quality_n", 100)
        client.log_metric(runs[model].info.run_id, "kid", kid)
    client.log_param(runs[TEACHER].info.run_id, HEADLINE_SPACE_PARAM, HEADLINE_SPACE)  # only the teacher's is today's
    study = load_study()
    evaluations = study.evaluations.set_index("model_run_id")
    teacher, student = evaluations.loc[TEACHER], evaluations.loc[STUDENT]
    logged = runs[STUDENT].data.metrics
    assert teacher.kid == 0.05 and teacher.fid == pytest.approx(runs[TEACHER].data.metrics["fid"])
    assert pd.isna(teacher.legacy_space) and pd.isna(teacher.kid_classifier)
    assert pd.isna(student.kid) and pd.isna(student.fid) and pd.isna(student.precision)  # never beside the headline
    assert (student.kid_classifier, student.legacy_space) == (0.07, "classifier")
    assert student.fid_classifier == pytest.approx(logged["fid"])
    assert student.precision_classifier == pytest.approx(logged["precision"])
    problems = study.problems.set_index("run_id")
    assert problems.loc[runs[STUDENT].info.run_id, "problem"] == SPACE_PROBLEM.format(space="classifier",
                                                                                      model=STUDENT)
    assert runs[TEACHER].info.run_id not in problems.index
    html = build_report(sections=("summary", "problems"), out_dir=tmp_path / "report", log_run=False).read_text()
    summary = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv").set_index("method")
    assert summary.loc["teacher", "kid"] == 0.05 and pd.isna(summary.loc["distill", "kid"])
    assert "in the classifier features, not the headline" in html
