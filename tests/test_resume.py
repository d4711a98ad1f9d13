"""Resume and no-lost-data: a run killed mid-epoch continues in the same MLflow run exactly where it
stopped; a non-finite loss ends the run FAILED with the last good epoch kept as checkpoints/last.pt."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CLI_ARGS, tiny_diffusion, tiny_train, tiny_unet
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.cli.main import cli
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.stages.model_run import ModelPlan, train_model
from dmat.stages.teacher import train_teacher
from dmat.training.loop import DiffusionLoss

EPOCHS = 6


def val_history(run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, "val_loss"))


def only_run_id() -> str:
    runs = tracking.find_runs("teacher", status=None)
    assert len(runs) == 1
    return runs[0].info.run_id


def wait_for_epochs(proc: subprocess.Popen, epochs: int, timeout: float = 120) -> str:
    """Poll the store until the subprocess's run has logged `epochs` epochs; return its run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        runs = tracking.find_runs("teacher", status=None)
        if runs and len(val_history(runs[0].info.run_id)) >= epochs:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("the run never reached the epoch to interrupt")


@contextlib.contextmanager
def teacher_process(project_env, *args: str):
    """`dmat teacher` in a subprocess with Ctrl-C as a terminal delivers it (a background job ignores
    SIGINT); killed on the way out, whatever the test did. It computes with as many threads as this process, so a
    run finished here after it gives the same numbers (a reduction split otherwise rounds otherwise)."""
    env = {**project_env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "dmat", "teacher", *TINY_CLI_ARGS, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        if not proc.stdout.closed:
            proc.communicate(timeout=60)


def stopped_message(stderr: str) -> str:
    """The one line dmat printed when it stopped (progress bars aside)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr)
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line and " INFO mlflow." not in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_ctrl_c_mid_run_then_resume_continues_the_same_run(store, project_env):
    with teacher_process(project_env, "--epochs", str(EPOCHS), "--save-interval", "4") as proc:
        run_id = wait_for_epochs(proc, 2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, somewhere inside epoch 3 (or its validation)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    killed = MlflowClient().get_run(run_id)
    assert killed.info.status == "KILLED"
    logged = val_history(run_id)
    assert 2 <= len(logged) < EPOCHS
    # save_interval 4 > epochs finished: last.pt was written on the way out, at the last logged epoch
    assert tracking.load_checkpoint(run_id, checkpoint.LAST)["epoch"] == logged[-1][0]
    assert stopped_message(err) == (f"interrupted (SIGINT): run {run_id} is KILLED with checkpoints/last.pt at epoch "
                                    f"{logged[-1][0]}: resume with `dmat teacher --resume {run_id}`")

    result = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert run_id in result.output
    resumed = MlflowClient().get_run(run_id)
    assert resumed.info.status == "FINISHED"
    history = val_history(run_id)
    assert [step for step, _ in history] == list(range(1, EPOCHS + 1))  # continuous, nothing twice
    assert history[: len(logged)] == logged
    assert resumed.data.metrics["epochs_run"] == EPOCHS
    assert len(tracking.find_runs("teacher", status=None)) == 1  # no second run

    # the same options uninterrupted give the same numbers: nothing was lost or repeated
    reference = train_teacher(tiny_train(epochs=EPOCHS, save_interval=4), tiny_unet(), tiny_diffusion())
    assert [v for _, v in val_history(reference)] == pytest.approx([v for _, v in history], rel=1e-5)

    again = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert again.exit_code == 2 and "FINISHED" in again.output and "only KILLED or FAILED" in again.output


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c_and_the_run_resumes(store, project_env):
    with teacher_process(project_env, "--epochs", "5", "--save-interval", "4") as proc:
        run_id = wait_for_epochs(proc, 2)
        proc.send_signal(signal.SIGTERM)  # what kill, timeout, job schedulers and container stops send
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    logged = val_history(run_id)
    assert tracking.load_checkpoint(run_id, checkpoint.LAST)["epoch"] == logged[-1][0]
    assert stopped_message(err).startswith(f"interrupted (SIGTERM): run {run_id} is KILLED with checkpoints/last.pt at "
                                           f"epoch {logged[-1][0]}")
    result = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert [step for step, _ in val_history(run_id)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_kill_9_between_saves_then_mark_and_resume_gives_each_epoch_once(store, project_env):
    with teacher_process(project_env, "--epochs", "6", "--save-interval", "3") as proc:
        run_id = wait_for_epochs(proc, 4)  # last.pt holds epoch 3 (the interval); epoch 4 is logged after it
        proc.kill()  # kill -9: no handler runs, the run stays RUNNING
        proc.wait(timeout=60)
    logged = val_history(run_id)
    assert MlflowClient().get_run(run_id).info.status == "RUNNING" and len(logged) >= 4
    assert tracking.load_checkpoint(run_id, checkpoint.LAST)["epoch"] == 3

    refused = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert refused.exit_code == 2 and "dmat runs --stale --mark-killed" in refused.stderr
    marked = CliRunner().invoke(cli, ["runs", "--stale", "--mark-killed"])
    assert marked.exit_code == 0 and f"marked {run_id} KILLED" in marked.output
    result = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert result.exit_code == 0, result.output
    history = val_history(run_id)
    assert [step for step, _ in history] == [1, 2, 3, 4, 5, 6]  # epochs 4.. trained again, each logged once
    assert history[: len(logged)] == logged


class NanAfter:
    """The DDPM loss until `good_steps` training steps have run, then NaN (as a diverging run gives)."""

    def __init__(self, diffusion: GaussianDiffusion, good_steps: int):
        self.inner, self.good_steps, self.steps = DiffusionLoss(diffusion), good_steps, 0

    def loss(self, model, x0, generator=None):
        loss, parts = self.inner.loss(model, x0, generator)
        if model.training:
            self.steps += 1
            if self.steps > self.good_steps:
                loss = loss * float("nan")
        return loss, parts


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_epoch(store):
    cfg = tiny_train(epochs=5, save_interval=5, batch_size=512)  # 4 steps per epoch
    unet = tiny_unet(image_size=8, in_channels=1)
    diffusion = GaussianDiffusion(tiny_diffusion())
    objective = NanAfter(diffusion, good_steps=4 * 2 + 1)  # NaN one step into epoch 3
    with pytest.raises(DmatError, match="non-finite at epoch 3"):
        train_model(cfg, lambda device: ModelPlan("teacher", "nan", unet, diffusion, lambda model: objective, {}, {}))
    run = tracking.find_runs("teacher", status="FAILED")[0]
    assert [step for step, _ in val_history(run.info.run_id)] == [1, 2]
    last = tracking.load_checkpoint(run.info.run_id, checkpoint.LAST)
    assert last["epoch"] == 2 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert tracking.load_model(run.info.run_id).model.config == UNet(unet).config


def test_a_failed_student_resumes_in_the_same_run_with_its_own_options(study, teacher_run_id):
    from dmat.stages.distill import train_student

    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, kd_weight=0.5, student_steps=10)
    MlflowClient().set_terminated(run_id, "FAILED")  # as if the process had died after epoch 1
    result = CliRunner().invoke(cli, ["distill", "--resume", run_id, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in val_history(run_id)] == [1, 2]
    assert run.data.params["kd_weight"] == "0.5" and run.data.params["size_factor"] == "0.5"
    assert tracking.load_model(run_id).model.config.size_factor == 0.5


def test_ctrl_c_while_the_model_is_logged_leaves_no_half_logged_model_and_the_resume_logs_one(store, monkeypatch):
    """MLflow creates the logged model (PENDING) before it writes its files: an interrupt there must not leave it
    beside the one the resumed run logs, nor make the resume log the run's summary metrics a second time."""
    import mlflow

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.pyfunc, "save_model", interrupted)  # called by log_model once the model exists
        with pytest.raises(KeyboardInterrupt):
            train_teacher(tiny_train(epochs=1), tiny_unet(), tiny_diffusion())
    run_id = only_run_id()
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.search_logged_models([experiment]) == []

    train_teacher(tiny_train(epochs=1), tiny_unet(), tiny_diffusion(), resume=run_id)
    models = client.search_logged_models([experiment])
    assert [(m.source_run_id, m.status.value) for m in models] == [(run_id, "READY")]
    assert [m.step for m in client.get_metric_history(run_id, "best_val_loss")] == [0]
    assert client.get_run(run_id).info.status == "FINISHED"
