"""Students below their teacher's resolution: a 4 px student of the tiny 8 px teacher learns from the teacher's
samples (resized) mixed with real images, the teacher only ever sees 8 px images, and the student is evaluated
at 4 px with a feature extractor trained at 4 px."""

from __future__ import annotations

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_train

from dmat import tracking
from dmat.cli.main import cli
from dmat.config import DistillConfig
from dmat.data import load_splits
from dmat.errors import DmatError
from dmat.evaluation import features
from dmat.evaluation.evaluate import evaluate_run
from dmat.model.unet import UNet
from dmat.stages.distill import train_student, train_students
from dmat.stages.resolution import student_splits, teacher_samples

EXPERIMENT = "dmat-test-resolution"  # these students stay out of the other tests' experiments
LOW = dict(student_image_size=4, student_steps=4)
FAST_EVAL = dict(num_samples=80, steps="4", batch_size=40, num_trajectories=3, eps_timesteps=5, device="cpu")
VS_TEACHER = ("final_mse", "traj_mse_mean", "traj_cosine_mean", "teacher_path_length", "eps_mse_teacher")


@pytest.fixture
def forwards(monkeypatch) -> list[tuple[int, int]]:
    """Every UNet forward pass as (the network's image size, the input's): any network fed an image of another
    size than its own fails at once (the UNet is convolutional, so it would not fail by itself)."""
    calls = []
    forward = UNet.forward

    def checked(self, x, t, *args, **kwargs):
        calls.append((self.config.image_size, x.shape[-1]))
        assert x.shape[-2:] == (self.config.image_size,) * 2, f"a {self.config.image_size}px network fed {x.shape}"
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", checked)
    return calls


def _real_train_images() -> int:
    return len(load_splits(tiny_train(image_size=4)).train)


def test_a_lower_resolution_student_learns_from_teacher_samples_and_is_evaluated_at_its_size(study, teacher_run_id,
                                                                                           forwards):
    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, EXPERIMENT, **LOW)
    run = mlflow.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tracking.load_model(run_id).model.config.image_size == 4  # the checkpoint rebuilds at 4 px
    assert tags[tracking.IMAGE_SIZE] == "4" and tags[tracking.TEACHER_RUN_ID] == teacher_run_id
    assert (params["image_size"], params["student_image_size"]) == ("8", "4")  # the teacher's data, the student's
    real = _real_train_images()
    assert int(params["teacher_samples"]) == real and metrics["train_images"] == 2 * real  # half and half
    assert float(params["teacher_samples_seconds"]) > 0
    assert params["training_data"] == "real images and teacher samples at 4px"
    assert "val_kd_loss" not in metrics and metrics["val_task_loss"] > 0  # the plain DDPM loss
    teacher_calls = [c for c in forwards if c[0] == 8]
    assert teacher_calls and all(c == (8, 8) for c in teacher_calls)  # it sampled, at its own size only
    assert {c for c in forwards if c[0] != 8} == {(4, 4)}

    forwards.clear()
    extractor = features.train_feature_extractor("digits", 4, epochs=2)
    evaluation = mlflow.get_run(evaluate_run(run_id, **FAST_EVAL))
    assert evaluation.data.tags[tracking.FEATURE_EXTRACTOR_RUN_ID] == extractor  # found by data set and size
    assert mlflow.get_run(extractor).data.tags[tracking.IMAGE_SIZE] == "4"
    assert evaluation.data.tags[tracking.IMAGE_SIZE] == "4"
    assert evaluation.data.tags[tracking.TEACHER_RUN_ID] == teacher_run_id  # lineage kept, comparison skipped
    assert evaluation.data.params["teacher_comparison"].startswith("skipped: the student works at 4px")
    assert not set(VS_TEACHER) & set(evaluation.data.metrics)  # absent, never 0
    assert evaluation.data.metrics["fid"] > 0 and "eps_mse_true" in evaluation.data.metrics
    assert set(forwards) == {(4, 4)}  # the teacher is not run at all in the student's evaluation


def test_scratch_at_a_lower_resolution_trains_on_real_images_alone(study, teacher_run_id, forwards):
    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, EXPERIMENT, method="scratch", **LOW)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["train_images"] == _real_train_images() and "teacher_samples" not in run.data.params
    assert run.data.params["training_data"] == "real images at 4px"
    assert {c[0] for c in forwards} == {4}  # no teacher samples: the teacher never ran


def test_the_mix_and_the_validation_split(study, teacher_run_id):
    teacher = tracking.load_model(teacher_run_id)
    real = load_splits(tiny_train(image_size=4))
    settings = DistillConfig(teacher_sample_fraction=0.2, **LOW)
    mixed, bank = student_splits(teacher, tiny_train(), settings, 4, "cpu")
    assert bank["teacher_samples"] == round(len(real.train) / 4) and len(mixed.train) == len(real.train) * 5 // 4
    assert torch.equal(torch.stack(list(mixed.val)), torch.stack(list(real.val)))  # the real split, at 4 px
    scratch, logged = student_splits(teacher, tiny_train(), DistillConfig(method="scratch", **LOW), 4, "cpu")
    assert len(scratch.train) == len(real.train) and logged == {"training_data": "real images at 4px"}
    samples = teacher_samples(teacher, 10, 4, tiny_train(), "cpu")
    assert samples.shape == (10, 1, 4, 4) and samples.abs().max() <= 1
    assert torch.equal(samples, teacher_samples(teacher, 10, 4, tiny_train(), "cpu"))  # a fixed seed


@pytest.mark.parametrize("settings,message", [
    (dict(student_image_size=16), "student-image-size 16 is larger than the teacher's 8px"),
    (dict(student_image_size=3), "student-image-size 3 cannot be halved 1 times"),
    (dict(student_image_size=-4), "student-image-size must be a positive integer"),
    (dict(student_image_size=4, init="pruned"), "init pruned needs the teacher's resolution"),
    (dict(student_image_size=4, teacher_sample_fraction=1.0), "teacher-sample-fraction must be in"),
])
def test_bad_student_sizes_are_one_clear_error_before_any_run(study, teacher_run_id, settings, message):
    before = len(tracking.find_runs("student", status=None))
    with pytest.raises(DmatError, match=message):
        train_student(tiny_train(), 0.5, teacher_run_id, EXPERIMENT, student_steps=4, **settings)
    if settings.get("student_image_size") == 3:  # the teacher's architecture says so: each size reports it
        outcomes = train_students(tiny_train(), [0.5, 0.3], teacher_run_id, EXPERIMENT, student_steps=4, **settings)
        assert all(message in o.error and o.run_id is None for o in outcomes)
    else:  # before the teacher is even loaded
        with pytest.raises(DmatError, match=message):
            train_students(tiny_train(), [0.5, 0.3], teacher_run_id, EXPERIMENT, student_steps=4, **settings)
    assert len(tracking.find_runs("student", status=None)) == before


def test_cli_refuses_a_student_larger_than_its_teacher(study, teacher_run_id):
    result = CliRunner().invoke(cli, ["distill", "--size-factor", "0.5", "--teacher-run-id", teacher_run_id,
                                      "--image-size", "8", "--student-image-size", "16", "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert "larger than the teacher's 8px" in result.stderr


def test_students_of_one_loop_share_one_bank_of_teacher_samples(study, teacher_run_id, forwards):
    outcomes = train_students(tiny_train(epochs=1), [0.5, 0.3], teacher_run_id, EXPERIMENT, **LOW)
    assert all(o.error is None for o in outcomes), outcomes
    runs = [mlflow.get_run(o.run_id) for o in outcomes]
    assert [r.data.tags[tracking.IMAGE_SIZE] for r in runs] == ["4", "4"]
    assert len({r.data.params["teacher_samples_seconds"] for r in runs}) == 1  # made once, for both
    teacher_images = sum(1 for size, _ in forwards if size == 8)
    sampling_steps = 4  # tiny_train's sample_steps: one teacher forward per step and batch of the one bank
    batches = -(-_real_train_images() // tiny_train().batch_size)
    assert teacher_images == sampling_steps * batches


def test_an_interrupted_lower_resolution_student_resumes_from_its_own_params(study, teacher_run_id):
    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, EXPERIMENT, teacher_sample_fraction=0.1, **LOW)
    mlflow.MlflowClient().set_terminated(run_id, "FAILED")  # as if it had stopped after its first epoch
    result = CliRunner().invoke(cli, ["distill", "--resume", run_id, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_run"] == 2
    assert tracking.load_model(run_id).model.config.image_size == 4
