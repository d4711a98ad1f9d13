"""What the MLflow UI shows of a study: teacher and students one row each, their size (params, num_parameters,
flops_per_forward) beside their evaluation's scores (eval_kid, eval_fid, ...) on the same run, however deep the
pipeline nests them; and a run's description holds a reproduce command that can be pasted into a shell."""

from __future__ import annotations

import shlex

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.evaluation.logged import on_model_run
from dmat.study import stage
from dmat.study.ending import MODELS_FILTER
from dmat.tracking import lineage, notes


def _run(client, tags: dict, metrics: dict | None = None, params: dict | None = None, parent: str | None = None) -> str:
    experiment = client.get_experiment_by_name("dmat-test").experiment_id
    run = client.create_run(experiment, tags={**tags, **({tracking.PARENT_RUN_ID: parent} if parent else {})})
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _evaluation(client, model: str, kid: float, parent: str) -> str:
    scores = {"kid": kid, "kid_sd": kid / 10, "fid": 100 * kid, "fid_sd": 3.0, "kid_classifier": kid / 2,
              "fid_classifier": 50 * kid, "precision": 0.5, "recall": 0.4, "latency_ms_per_image": 80.0,
              "num_parameters": 1000.0, "flops_per_forward": 2e6, "copy_rate": 0.0}
    return _run(client, {tracking.ROLE: tracking.EVALUATION, tracking.MODEL_RUN_ID: model}, scores, parent=parent)


def test_teacher_and_students_are_one_row_each_with_size_and_scores_on_the_same_run(store):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    # as a pipeline lays them out: its loop and the evaluations nested under the pipeline run, the models top-level
    # runs launched by the pipeline (the teacher) and the loop (the students)
    pipeline = _run(client, {tracking.ROLE: tracking.PIPELINE})
    loop = _run(client, {tracking.ROLE: tracking.STUDENTS_LOOP}, parent=pipeline)
    models = {size: _run(client, {tracking.ROLE: role, tracking.SIZE_FACTOR: str(size),
                                  tracking.LAUNCHED_BY: pipeline if role == tracking.TEACHER else loop},
                         {"num_parameters": 40000 * size ** 2, "flops_per_forward": 1e7 * size ** 2},
                         {"size_factor": size})
              for size, role in ((1.0, tracking.TEACHER), (0.5, tracking.STUDENT), (0.25, tracking.STUDENT))}
    evaluations = {size: _evaluation(client, run_id, 0.01 / size, pipeline) for size, run_id in models.items()}
    for size, run_id in models.items():
        copied = on_model_run(run_id, evaluations[size])
        assert "eval_kid" in copied and "num_parameters" not in copied  # the model run has its own

    rows = mlflow.search_runs(filter_string=MODELS_FILTER)
    assert sorted(rows["tags.dmat.role"]) == ["student", "student", "teacher"]  # one row per model
    assert len(mlflow.search_runs(filter_string="tags.`dmat.role` = 'student'")) == 2
    rows = rows.set_index("run_id")
    for size, run_id in models.items():
        row = rows.loc[run_id]
        assert float(row["params.size_factor"]) == size and row["metrics.num_parameters"] == 40000 * size ** 2
        assert row["metrics.flops_per_forward"] == 1e7 * size ** 2  # the model's own, not the evaluation's 2e6
        assert row["metrics.eval_kid"] == 0.01 / size and row["metrics.eval_fid"] == 1 / size
        assert row["metrics.eval_kid_classifier"] == 0.005 / size and row["metrics.eval_latency_ms_per_image"] == 80
        assert row[f"tags.{tracking.EVALUATION_RUN_ID}"] == evaluations[size]
    assert "metrics.eval_copy_rate" not in rows.columns  # headline scores only; the evaluation run has the rest


def test_a_model_evaluated_again_shows_its_newest_scores_and_an_older_run_gets_its_size(store):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    older = _run(client, {tracking.ROLE: tracking.STUDENT})  # from before model runs logged num_parameters
    first, second = _evaluation(client, older, 0.2, None), _evaluation(client, older, 0.1, None)
    assert on_model_run(older, first)["num_parameters"] == 1000
    on_model_run(older, second)
    run = client.get_run(older).data
    assert run.metrics["eval_kid"] == 0.1 and run.tags[tracking.EVALUATION_RUN_ID] == second
    assert [m.value for m in client.get_metric_history(older, "eval_kid")] == [0.2, 0.1]
    assert client.get_run(second).data.metrics["kid"] == 0.1  # the evaluation keeps its own, plain names


def test_the_reproduce_command_pastes_into_a_shell_as_mlflow_run_stored_the_params(store):
    """`mlflow run` logs each -P value shell-quoted (an empty one as the two characters '', one with a space as
    'a b'): the description's command holds the values, quoted once, and no empty option."""
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    teacher = _run(client, {tracking.ROLE: tracking.TEACHER, tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8"})
    params = {"system_metrics": "''", "experiment": "''", "size_factor": "0.5", "teacher_run_id": teacher,
              "dataset": "'folder:/data/my faces'", "epochs": "3", "compile": "auto"}
    student = _run(client, {tracking.ROLE: tracking.STUDENT, tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8",
                            tracking.SIZE_FACTOR: "0.5", tracking.TEACHER_RUN_ID: teacher}, params=params)
    note = notes.describe(student)
    command = note.split("Reproduce: `")[1].split("`")[0]
    assert "'\"'\"'" not in command and "''" not in command and "--system-metrics" not in command
    args = shlex.split(command)
    assert args[:2] == ["dmat", "distill"]
    given = dict(zip(args[2::2], args[3::2]))
    assert given["--dataset"] == "folder:/data/my faces" and given["--size-factor"] == "0.5"
    assert given["--epochs"] == "3" and given["--teacher-run-id"] == teacher
    client.log_batch(student, tags=[RunTag("checked", "yes")])  # the run is still writable afterwards


def test_a_pipeline_nests_its_bookkeeping_runs_and_launches_its_models_as_top_level_runs(store, monkeypatch):
    """The MLflow UI shows a nested run only under its expanded parent, search filter or not: a study's models must
    be top-level runs to be rows of its runs table and points of its chart view."""
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    pipeline = _run(client, {tracking.ROLE: tracking.PIPELINE})
    # as `mlflow run` starts a stage's run from within the pipeline's: nested under it
    started = {entry: _run(client, {}, parent=pipeline) for entry in ("teacher", "distill", "students", "evaluate")}
    for entry, run_id in started.items():
        stage._tag_started(stage.Stage(entry, entry, run_id=run_id), pipeline, lineage.Source(None))
    tags = {entry: client.get_run(run_id).data.tags for entry, run_id in started.items()}
    for model in ("teacher", "distill"):
        assert tags[model][tracking.LAUNCHED_BY] == pipeline and tracking.PARENT_RUN_ID not in tags[model]
    for bookkeeping in ("students", "evaluate"):
        assert tags[bookkeeping][tracking.PARENT_RUN_ID] == pipeline and tracking.LAUNCHED_BY not in tags[bookkeeping]

    monkeypatch.setenv("MLFLOW_RUN_ID", started["students"])  # a students loop's process trains its students
    with tracking.tracked_run("student", {tracking.ROLE: tracking.STUDENT}, experiment="dmat-test",
                              active=False) as student:
        pass
    tags = client.get_run(student.info.run_id).data.tags
    assert tags[tracking.LAUNCHED_BY] == started["students"] and tracking.PARENT_RUN_ID not in tags
