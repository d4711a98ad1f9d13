"""Students: lineage to the teacher, the distillation loss really using the teacher, bad input, sizes."""

import dataclasses
import math
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import tiny_train
from recording import MemoryRecorder

from dmat import tracking
from dmat.cli.main import cli
from dmat.config import DEFAULT_SIZE_FACTORS, DistillConfig
from dmat.data import load_splits
from dmat.errors import DmatError
from dmat.model.unet import UNet, UNetConfig
from dmat.stages.distill import resolve_teacher, train_student, train_students
from dmat.training.distillation import DistillLoss, TeacherPass
from dmat.training.loop import fit

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "dmat-test-distill"  # students of these tests stay out of the other tests' experiment
TINY_STUDENT_ARGS = ["--image-size", "8", "--epochs", "1", "--batch-size", "128", "--sample-steps", "4",
                     "--num-sample-images", "4", "--student-steps", "4", "--device", "cpu", "--experiment", EXPERIMENT]


def _students():
    return tracking.find_runs("student", status=None)


def test_parameters_grow_with_size_factor_for_the_default_architecture():
    counts = [UNet(UNetConfig(size_factor=s)).num_parameters for s in DEFAULT_SIZE_FACTORS]
    assert counts == sorted(set(counts)), counts  # strictly increasing over the study's sizes
    grid = [UNet(UNetConfig(size_factor=s / 20)).num_parameters for s in range(1, 21)]
    assert all(a <= b for a, b in zip(grid, grid[1:])), grid  # tiny sizes share the minimum width


@pytest.mark.parametrize("size", [0, -1, 1.5, "abc", float("nan")])
def test_bad_size_factor_is_one_clear_error_before_any_run(study, teacher_run_id, size):
    before = len(_students())
    with pytest.raises(DmatError, match="size factor must be"):
        train_student(tiny_train(), size, teacher_run_id, student_steps=4)
    result = CliRunner().invoke(cli, ["distill", "--size-factor", str(size), "--teacher-run-id", teacher_run_id,
                                      *TINY_STUDENT_ARGS])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "size factor must be" in result.stderr
    assert len(_students()) == before


@pytest.mark.parametrize("settings,message", [
    (dict(method="teach"), "method must be distill or scratch"),
    (dict(kd_weight=-1.0), "kd-weight must be >= 0"),
    (dict(kd_weight=0.0), "needs kd-weight or feature-weight > 0"),
    (dict(method="scratch", task_weight=0.0), "task-weight must be > 0"),
    (dict(student_steps=21), "exceeds the teacher's 20 timesteps"),
])
def test_bad_settings_are_clear_errors(study, teacher_run_id, settings, message):
    with pytest.raises(DmatError, match=message):
        train_student(tiny_train(), 0.5, teacher_run_id, **{"student_steps": 4, **settings})


def test_bad_teachers_are_clear_errors(study, teacher_run_id):
    before = len(_students())
    with pytest.raises(DmatError, match="no MLflow run with id 'deadbeef'"):
        train_student(tiny_train(), 0.5, "deadbeef")
    with pytest.raises(DmatError, match="was trained on digits at 8px, not fashion-mnist at 8px"):
        train_student(tiny_train(dataset="fashion-mnist"), 0.5, teacher_run_id)
    with pytest.raises(DmatError, match="was trained on digits at 8px, not digits at 16px"):
        train_student(tiny_train(image_size=16), 0.5, teacher_run_id)
    with pytest.raises(DmatError, match="no finished teacher for dataset digits at 16px"):
        train_student(tiny_train(image_size=16), 0.5)
    assert len(_students()) == before


def test_teacher_lookup_takes_the_latest_finished_teacher_of_the_same_data(store):
    def run(tags, status="FINISHED"):
        with tracking.tracked_run("fake", tags) as r:
            pass
        mlflow.MlflowClient().set_terminated(r.info.run_id, status)
        return r.info.run_id

    same = {tracking.ROLE: "teacher", tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8"}
    older, latest = run(same), run(same)
    run({**same, tracking.IMAGE_SIZE: "16"})
    failed = run(same, "FAILED")
    report = run({tracking.ROLE: "report"})
    assert resolve_teacher(tiny_train(), None) == latest != older
    with pytest.raises(DmatError, match="is FAILED, not FINISHED"):
        resolve_teacher(tiny_train(), failed)
    with pytest.raises(DmatError, match="is a report run, not a teacher"):
        resolve_teacher(tiny_train(), report)


def _eps_distance(student, teacher, diffusion, x0) -> float:
    """MSE between student and teacher eps on fixed x_t, spread over every timestep."""
    generator = torch.Generator().manual_seed(7)
    t = torch.arange(x0.shape[0]) % diffusion.timesteps
    x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    with torch.no_grad():
        return F.mse_loss(diffusion.predict_eps(student.eval(), x_t, t), diffusion.predict_eps(teacher, x_t, t)).item()


@pytest.mark.slow
def test_kd_only_brings_the_student_closer_to_the_teacher(study, teacher_run_id):
    teacher = tracking.load_model(teacher_run_id)
    x0 = torch.stack([load_splits(tiny_train()).val[i] for i in range(100)])
    torch.manual_seed(0)
    untrained = UNet(dataclasses.replace(teacher.model.config, size_factor=0.5))
    # task_weight 0: if the teacher term did nothing, nothing would be learned at all
    run_id = train_student(tiny_train(epochs=3), 0.5, teacher_run_id, EXPERIMENT, kd_weight=1.0, task_weight=0.0,
                           student_steps=4)
    student = tracking.load_model(run_id)
    before = _eps_distance(untrained, teacher.model, teacher.diffusion, x0)
    after = _eps_distance(student.model, teacher.model, teacher.diffusion, x0)
    assert after < 0.75 * before, (before, after)  # measured: 0.172 -> 0.106
    kd = [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "val_kd_loss")]
    assert len(kd) == 3 and kd[-1] < kd[0]


def test_feature_kd_trains_its_projections_with_the_student(study, teacher_run_id):
    teacher = tracking.load_model(teacher_run_id)
    same_width = UNet(teacher.model.config)
    assert DistillLoss(teacher.diffusion, DistillConfig(feature_weight=1.0), teacher.model,
                            same_width.feature_channels).trainable_parameters() == []  # widths equal: no projection
    student = UNet(dataclasses.replace(teacher.model.config, size_factor=0.5))
    objective = DistillLoss(teacher.diffusion, DistillConfig(size_factor=0.5, feature_weight=1.0),
                                 teacher.model, student.feature_channels)
    initial = [p.detach().clone() for p in objective.trainable_parameters()]
    assert initial
    teacher_weights = [p.detach().clone() for p in teacher.model.parameters()]
    recorder = MemoryRecorder()
    fit(student, teacher.diffusion, objective, load_splits(tiny_train()), tiny_train(epochs=1), torch.device("cpu"),
        recorder)
    assert all(not torch.equal(a, b) for a, b in zip(initial, objective.trainable_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_weights, teacher.model.parameters()))  # teacher frozen
    metrics = recorder.metrics[1]
    assert math.isfinite(metrics["val_feature_loss"]) and metrics["val_kd_loss"] > 0


def test_scratch_student_has_no_teacher_terms(study, teacher_run_id):
    teacher = tracking.load_model(teacher_run_id)
    objective = DistillLoss(teacher.diffusion, DistillConfig(method="scratch", feature_weight=1.0), teacher.model,
                                 [4, 4, 4])
    assert objective.teacher is None and objective.trainable_parameters() == []
    loss, parts = objective.loss(UNet(dataclasses.replace(teacher.model.config, size_factor=0.5)),
                                 torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0))
    assert set(parts) == {"task_loss"} and loss.item() == pytest.approx(parts["task_loss"])


def test_extra_tags_and_an_epoch_callback_that_stops_training(study, teacher_run_id):
    seen = []

    def prune(epoch, metrics):  # what an Optuna pruner does through the sweep
        seen.append((epoch, metrics["val_loss"]))
        return True

    run_id = train_student(tiny_train(epochs=3), 0.3, teacher_run_id, EXPERIMENT, tags={"sweep.trial": "7"},
                           on_epoch_end=prune, student_steps=4)
    run = mlflow.get_run(run_id)
    assert [epoch for epoch, _ in seen] == [1] and run.data.metrics["epochs_run"] == 1
    assert run.data.tags["sweep.trial"] == "7" and run.data.tags[tracking.TEACHER_RUN_ID] == teacher_run_id
    # a version of its own kind's registered model: size factor, method and init in the name
    [version] = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    assert version.name == "dmat-digits-8px-student-0.3-distill-random"
    assert f"models:/{version.name}/{version.version}" in run.data.tags[tracking.NOTE]


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run but the timings and system metrics, as (step, value) series."""
    client = mlflow.MlflowClient()
    names = [k for k in client.get_run(run_id).data.metrics
             if not k.startswith("system/") and k not in ("epoch_seconds", "train_images_per_s")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in names}


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in mlflow.MlflowClient().list_artifacts(run_id, path):
        found |= _artifacts(run_id, item.path) if item.is_dir else {item.path}
    return found


def _teacher_forwards(monkeypatch) -> list:
    """Counts the teacher network's forward passes in the students that train from now on."""
    calls, init = [], TeacherPass.__init__

    def counting(self, model, remember=False):
        init(self, model, remember)
        model.register_forward_hook(lambda *args: calls.append(1))

    monkeypatch.setattr(TeacherPass, "__init__", counting)
    return calls


@pytest.mark.slow
def test_students_in_one_loop_are_the_students_trained_one_by_one(study, teacher_run_id, monkeypatch):
    """The same metrics, weights, params, tags and artifacts, with one teacher pass per batch instead of one per
    student and batch."""
    train, sizes = tiny_train(epochs=2), [0.3, 0.6]
    forwards = _teacher_forwards(monkeypatch)
    alone = train_students(train, sizes, teacher_run_id, EXPERIMENT, shared_teacher=False, student_steps=4)
    alone_forwards = len(forwards)
    together = train_students(train, sizes, teacher_run_id, EXPERIMENT, student_steps=4)
    splits = load_splits(train)
    batches = train.epochs * sum(-(-len(part) // train.batch_size) for part in (splits.train, splits.val))
    assert (alone_forwards, len(forwards) - alone_forwards) == (len(sizes) * (1 + batches), len(sizes) + batches)
    for one, shared in zip(alone, together):  # (the 1 per size: the smoke check before each run)
        assert one.error is None and shared.error is None
        a, b = mlflow.get_run(one.run_id), mlflow.get_run(shared.run_id)
        assert _history(shared.run_id) == _history(one.run_id) and len(_history(one.run_id)["val_loss"]) == 2
        assert b.data.params == a.data.params and b.info.status == a.info.status == "FINISHED"
        varying = (tracking.OWNER_PID, tracking.OWNER_STARTED, tracking.HEARTBEAT, tracking.NOTE)
        assert {k: v for k, v in b.data.tags.items() if k not in varying} == \
               {k: v for k, v in a.data.tags.items() if k not in varying}
        tuned = {"autotune.json"}  # a loop measures its precision once, on the loop, not per student
        assert _artifacts(shared.run_id) - tuned == _artifacts(one.run_id) - tuned
        assert len(b.inputs.dataset_inputs) == len(a.inputs.dataset_inputs) == 2
        weights = [tracking.load_model(run_id).model.state_dict() for run_id in (one.run_id, shared.run_id)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_stopped_students_loop_is_continued_by_the_next_loop_in_the_same_runs_with_the_same_numbers(
        study, teacher_run_id, monkeypatch):
    """What a loop lost with its Ray node and retried, or a stopped pipeline's rerun, does: each stopped student
    goes on from its own last.pt (here one at epoch 2, one at epoch 1) in its own run, each epoch logged once,
    and ends as a loop never stopped ends."""
    from dmat.training.state import TrainingState

    train, sizes = tiny_train(epochs=3), [0.3, 0.6]
    whole = train_students(train, sizes, teacher_run_id, EXPERIMENT + "-whole", student_steps=4)
    end_epoch = TrainingState.end_epoch

    def stopped_after_epoch_2(state, metrics):  # Ctrl-C once the first student has ended its epoch 2
        end_epoch(state, metrics)
        if state.epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(TrainingState, "end_epoch", stopped_after_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_students(train, sizes, teacher_run_id, EXPERIMENT + "-stopped", student_steps=4)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT + "-stopped").experiment_id
    stopped = {r.data.tags[tracking.SIZE_FACTOR]: r.info.run_id
               for r in tracking.find_runs("student", status="KILLED", experiment_ids=[experiment])}
    assert sorted(stopped) == ["0.3", "0.6"]
    assert [len(_history(stopped[size])["val_loss"]) for size in ("0.3", "0.6")] == [2, 1]

    continued = train_students(train, sizes, teacher_run_id, EXPERIMENT + "-stopped", student_steps=4)
    assert [o.run_id for o in continued] == [stopped["0.3"], stopped["0.6"]]
    for alone, again, resumed_at in zip(whole, continued, (2, 1)):
        assert mlflow.get_run(again.run_id).info.status == "FINISHED"
        history, expected = _history(again.run_id), _history(alone.run_id)
        micro_batches = history.pop("micro_batch_size")  # logged by each process that trains the run
        assert [step for step, _ in micro_batches] == [0, resumed_at]
        assert history == {k: v for k, v in expected.items() if k != "micro_batch_size"}  # each epoch once, alike
        weights = [tracking.load_model(o.run_id).model.state_dict() for o in (alone, again)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert len(tracking.find_runs("student", status=None, experiment_ids=[experiment])) == 2


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["true", "false"])
def test_a_failed_size_is_reported_and_the_others_still_run(study, teacher_run_id, monkeypatch, shared):
    calls = {"n": 0}
    log_artifact = mlflow.log_artifact

    def flaky(*args, **kwargs):  # the tracking store fails once, during the first student
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return log_artifact(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifact", flaky)
    result = CliRunner().invoke(cli, ["students", "--sizes", "0.35 0.65", "--teacher-run-id", teacher_run_id,
                                      "--shared-teacher", shared, *TINY_STUDENT_ARGS])
    assert result.exit_code == 2, result.output
    assert "1 size(s) failed: 0.35" in result.stderr and "1 of 2 students trained" in result.stdout
    newest = {}
    for r in tracking.find_runs("student", {tracking.TEACHER_RUN_ID: teacher_run_id}, status=None):
        newest.setdefault(r.data.tags[tracking.SIZE_FACTOR], r.info.status)
    assert newest["0.35"] == "FAILED" and newest["0.65"] == "FINISHED"


@pytest.mark.slow
def test_mlflow_run_distill_makes_a_student_of_the_teacher(study, teacher_run_id, project_env, tmp_path):
    env = {**project_env, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    cmd = ["mlflow", "run", str(ROOT), "-e", "distill", "--env-manager", "local", "--storage-dir", str(tmp_path),
           "-P", "size_factor=0.4",
           "-P", f"teacher_run_id={teacher_run_id}", "-P", "image_size=8", "-P", "epochs=2", "-P", "batch_size=128",
           "-P", "sample_steps=4", "-P", "num_sample_images=4", "-P", "student_steps=4", "-P", "device=cpu"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tracking.find_runs("student", {tracking.TEACHER_RUN_ID: teacher_run_id, tracking.SIZE_FACTOR: "0.4"})[0]
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags[tracking.METHOD] == "distill" and tags[tracking.DATASET] == "digits" and tags[tracking.IMAGE_SIZE] == "8"
    assert params["kd_weight"] == "1" and params["student_steps"] == "4" and params["teacher_run_id"] == teacher_run_id
    assert {"num_parameters", "flops_per_forward", "val_kd_loss", "val_task_loss"} <= set(metrics)
    student, teacher = tracking.load_model(run.info.run_id), tracking.load_model(teacher_run_id)
    assert student.model.config == dataclasses.replace(teacher.model.config, size_factor=0.4)
    assert student.diffusion.config == teacher.diffusion.config  # one schedule
    assert metrics["num_parameters"] == student.model.num_parameters < teacher.model.num_parameters


def test_a_students_loop_under_mlflow_run_is_tagged_with_its_process_so_a_long_one_is_not_stale(
        study, teacher_run_id, monkeypatch):
    """`mlflow run -e students` creates the loop's run; the loop's process keeps it alive as tracked_run does for
    its own runs, else `dmat runs --stale` would call a loop stale 10 minutes after it began and --mark-killed
    would mark a live loop KILLED."""
    from mlflow.tracking import MlflowClient

    from dmat.tracking.liveness import why_stale

    started = int((time.time() - 3600) * 1000)  # a loop that began an hour ago
    loop = MlflowClient().create_run(mlflow.set_experiment(EXPERIMENT).experiment_id, start_time=started)
    assert why_stale(tracking.get_run(loop.info.run_id)) is not None
    monkeypatch.setenv("MLFLOW_RUN_ID", loop.info.run_id)
    result = CliRunner().invoke(cli, ["students", "--sizes", "0.35 0.65", "--teacher-run-id", teacher_run_id,
                                      *TINY_STUDENT_ARGS])
    assert result.exit_code == 0, result.output
    tags = tracking.get_run(loop.info.run_id).data.tags
    assert tags[tracking.OWNER_PID] == str(os.getpid()) and why_stale(tracking.get_run(loop.info.run_id)) is None
