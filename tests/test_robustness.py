"""Issue 16: no traceback reaches a user, no epoch is lost or logged twice.

Signals (a second Ctrl-C while the run is being closed, Ctrl-C in the first epoch), damaged inputs
(image files, checkpoints), stores that cannot be written, deleted experiments, bad options, a full
disk mid-run, runs left RUNNING by a dead process, a batch that does not fit in memory. The end-to-end
versions with real signals to a training subprocess are in tests/test_resume.py.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CLI_ARGS, tiny_diffusion, tiny_train, tiny_unet
from mlflow.tracking import MlflowClient
from recording import MemoryRecorder
from torch.utils.data import Subset

import dmat
from dmat import tracking
from dmat.cli.main import cli
from dmat.data import DataSplits, load_splits
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.stages.model_run import ModelPlan, model_params, train_model
from dmat.stages.teacher import train_teacher
from dmat.training.loop import DiffusionLoss, TrainingState, fit


def runs_in_store() -> list:
    return tracking.find_runs(None, status=None)


def one_line_error(result, *fragments: str, exit_code: int = 2) -> None:
    """The CLI ended with `exit_code` and printed one line holding every fragment (no traceback); MLflow's
    INFO lines (creating a new store's tables) and progress bars (downloading artifacts) are not errors."""
    assert result.exit_code == exit_code, result.output
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.stderr)
    lines = [line for line in text.splitlines() if line.strip() and " INFO mlflow." not in line and "%|" not in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class CallsBack(DiffusionLoss):
    """The DDPM loss that calls `action()` on training-mode call number `at` (call 1 is the smoke check
    that runs before the MLflow run exists; with 4 steps per epoch, call 2 + 4k starts epoch k+1)."""

    def __init__(self, diffusion, at: int, action):
        super().__init__(diffusion)
        self.at, self.action, self.calls = at, action, 0

    def loss(self, model, x0, generator=None):
        if model.training:
            self.calls += 1
            if self.calls == self.at:
                self.action()
        return super().loss(model, x0, generator)


def tiny_plan(objective_of, **overrides):
    unet, diffusion = tiny_unet(image_size=8, in_channels=1), GaussianDiffusion(tiny_diffusion())
    train = tiny_train(batch_size=512, **overrides)  # 4 training steps per epoch
    params = model_params(train, unet, diffusion.config)
    return train, lambda device: ModelPlan("teacher", "t", unet, diffusion, lambda model: objective_of(diffusion), {},
                                           params)


def sigint_self():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # the handler runs here, in the main thread


# ---------------------------------------------------------------- signals


def test_a_second_ctrl_c_while_the_run_is_closed_neither_loses_last_pt_nor_leaves_it_running(store, monkeypatch):
    save = tracking.save_checkpoint

    def save_interrupted_again(payload, name):  # the user presses Ctrl-C again while last.pt is written
        if name == checkpoint.LAST and payload["epoch"] == 2:
            sigint_self()
        save(payload, name)

    monkeypatch.setattr(tracking, "save_checkpoint", save_interrupted_again)
    train, plan = tiny_plan(lambda d: CallsBack(d, at=1 + 4 * 2 + 1, action=sigint_self), epochs=5, save_interval=5)
    with pytest.raises(KeyboardInterrupt) as raised:
        train_model(train, plan)
    run = runs_in_store()[0]
    assert run.info.status == "KILLED"
    assert tracking.load_checkpoint(run.info.run_id, checkpoint.LAST)["epoch"] == 2  # saved on the way out
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert raised.value.__notes__ == [f"run {run.info.run_id} is KILLED with checkpoints/last.pt at epoch 2: resume "
                                      f"with `dmat teacher --resume {run.info.run_id}`"]


def test_ctrl_c_in_the_first_epoch_says_there_is_nothing_to_resume(store):
    train, plan = tiny_plan(lambda d: CallsBack(d, at=3, action=sigint_self), epochs=3)
    with pytest.raises(KeyboardInterrupt) as raised:
        train_model(train, plan)
    run_id = runs_in_store()[0].info.run_id
    assert "before its first epoch finished, so there is nothing to resume" in raised.value.__notes__[0]
    result = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    one_line_error(result, f"run {run_id} was stopped before its first epoch finished", "nothing to resume")


def test_the_cli_prints_what_became_of_an_interrupted_run_and_the_resume_command(store, monkeypatch):
    """Ctrl-C during a real training run, after epoch 2 was saved: the line names the run the store holds as KILLED,
    the epoch its last.pt holds and the command that resumes it."""
    from dmat.tracking.recorder import MlflowRecorder

    log_epoch = MlflowRecorder.on_epoch

    def interrupted_in_epoch_2(self, epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt
        log_epoch(self, epoch, metrics)

    monkeypatch.setattr(MlflowRecorder, "on_epoch", interrupted_in_epoch_2)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS, "--epochs", "3"])
    [run] = runs_in_store()
    assert (run.data.tags[tracking.ROLE], run.info.status) == (tracking.TEACHER, "KILLED")
    one_line_error(result, f"interrupted (SIGINT): run {run.info.run_id} is KILLED with checkpoints/last.pt at epoch 2",
                   f"`dmat teacher --resume {run.info.run_id}`", exit_code=130)
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1]  # 2 was cut short


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw\nwith a second line")

    monkeypatch.setattr("dmat.stages.teacher.train_teacher", broken)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS])
    one_line_error(result, "error: unexpected RuntimeError: something nobody foresaw (full traceback in", exit_code=1)
    log = Path(result.stderr.split("full traceback in ")[1].rstrip(")\n"))
    assert "Traceback (most recent call last)" in log.read_text() and "with a second line" in log.read_text()
    log.unlink()


# ---------------------------------------------------------------- runs left RUNNING


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def running_run(**tags) -> str:
    experiment = mlflow.set_experiment("dmat-test").experiment_id
    run = MlflowClient().create_run(experiment, tags={tracking.ROLE: "teacher", tracking.RUN_NAME: "t", **tags})
    return run.info.run_id


def test_runs_stale_finds_runs_whose_process_is_gone_and_marks_them_killed(store):
    here = socket.gethostname()
    dead = running_run(**{tracking.OWNER_HOST: here, tracking.OWNER_PID: str(dead_pid()), tracking.OWNER_STARTED: "1"})
    alive = running_run(**tracking.owner_tags())
    silent = running_run(**{tracking.OWNER_HOST: "elsewhere", tracking.OWNER_PID: "7",
                            tracking.HEARTBEAT: str(int(time.time()) - 3600)})
    beating = running_run(**{tracking.OWNER_HOST: "elsewhere", tracking.OWNER_PID: "7",
                             tracking.HEARTBEAT: str(int(time.time()))})

    resume = CliRunner().invoke(cli, ["teacher", "--resume", dead])
    one_line_error(resume, "is still marked RUNNING", "is gone", "dmat runs --stale --mark-killed")
    listed = CliRunner().invoke(cli, ["runs", "--stale"])
    assert listed.exit_code == 0, listed.output
    assert dead in listed.output and silent in listed.output and "no heartbeat for 60 minute" in listed.output
    assert alive not in listed.output and beating not in listed.output
    assert CliRunner().invoke(cli, ["runs", "--mark-killed"]).exit_code == 2  # only with --stale
    marked = CliRunner().invoke(cli, ["runs", "--stale", "--mark-killed"])
    assert marked.exit_code == 0 and f"resume it with `dmat teacher --resume {dead}`" in marked.output
    status = {r: MlflowClient().get_run(r).info.status for r in (dead, alive, silent, beating)}
    assert status == {dead: "KILLED", alive: "RUNNING", silent: "KILLED", beating: "RUNNING"}


# ---------------------------------------------------------------- damaged inputs


def image_folder(root: Path, good: int = 12) -> Path:
    from PIL import Image

    folder = root / "images" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_a_damaged_image_in_a_folder_data_set_is_one_line_before_any_run(store, tmp_path, damage):
    folder = image_folder(tmp_path)
    intact = (folder / "05.png").read_bytes()
    (folder / "05.png").write_bytes(intact[: len(intact) // 2] if damage == "truncated" else b"hello")
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS, "--dataset", f"folder:{tmp_path / 'images'}"])
    one_line_error(result, "1 of 12 images cannot be read", "05.png", "remove or replace")
    assert runs_in_store() == []


def fake_teacher() -> str:
    """A teacher run with real (tiny) checkpoints and params, without training it."""
    torch.manual_seed(0)
    train, unet, diffusion = tiny_train(), tiny_unet(image_size=8), GaussianDiffusion(tiny_diffusion())
    model = UNet(unet)
    with tracking.tracked_run("teacher", {tracking.ROLE: "teacher", tracking.DATASET: "digits",
                                          tracking.IMAGE_SIZE: "8"}) as run:
        tracking.log_params(model_params(train, unet, diffusion.config))
        ckpt = checkpoint.model_checkpoint(model, diffusion, model.state_dict(), epoch=1, val_loss=1.0)
        tracking.save_checkpoint(ckpt, checkpoint.BEST)
        tracking.save_checkpoint({**ckpt, "train_state": {}}, checkpoint.LAST)
    return run.info.run_id


def artifact_file(run_id: str, name: str) -> Path:
    return Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints" / name


@pytest.mark.parametrize("damage", [b"", "half"])
def test_a_truncated_or_empty_checkpoint_is_one_line(store, damage):
    teacher = fake_teacher()
    for name in (checkpoint.BEST, checkpoint.LAST):
        path = artifact_file(teacher, name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage == "half" else damage)
    what = "it is empty" if damage == b"" else "truncated or corrupt"
    student = CliRunner().invoke(cli, ["distill", "--size-factor", "0.5", "--teacher-run-id", teacher,
                                       "--image-size", "8", "--device", "cpu"])
    one_line_error(student, f"checkpoints/best.pt of run {teacher} is truncated or corrupt", what)
    MlflowClient().set_terminated(teacher, "KILLED")
    resume = CliRunner().invoke(cli, ["teacher", "--resume", teacher])
    one_line_error(resume, f"checkpoints/last.pt of run {teacher} is truncated or corrupt", what)
    assert len(runs_in_store()) == 1


@pytest.mark.parametrize("status,problem", [("FINISHED", "not evaluated"), ("FAILED", "failed")])
def test_the_report_of_a_store_whose_only_teacher_has_no_evaluation_lists_it_as_a_problem(store, tmp_path, status,
                                                                                          problem):
    import pandas as pd

    teacher = fake_teacher()
    MlflowClient().set_terminated(teacher, status)
    result = CliRunner().invoke(cli, ["report", "--out-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    problems = pd.read_csv(tmp_path / "report" / "tables" / "problems.csv")
    assert (problems.run_id.tolist(), problems.problem.tolist()) == ([teacher], [problem])


# ---------------------------------------------------------------- stores, experiments, disks


def test_a_deleted_experiment_is_one_line_and_no_run(store):
    MlflowClient().delete_experiment(mlflow.set_experiment("dmat-test").experiment_id)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS])
    one_line_error(result, "experiment 'dmat-test' is deleted", "mlflow experiments restore")


def test_an_unreachable_server_fails_fast_with_resume_too(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    for command in (["teacher", "--resume", "abc"], ["distill", "--resume", "abc"], ["runs", "--stale"]):
        start = time.monotonic()
        result = CliRunner().invoke(cli, command)
        one_line_error(result, "tracking server http://127.0.0.1:9 is unreachable")
        assert time.monotonic() - start < 30, command


def test_a_full_disk_mid_run_fails_the_run_in_one_line_and_it_resumes(store, monkeypatch):
    log_artifact, calls = mlflow.log_artifact, []

    def disk_fills_up(path, artifact_path=None, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # epoch 1's best.pt and last.pt fit; nothing after that (epoch 2's)
            raise OSError(errno.ENOSPC, "No space left on device")
        log_artifact(path, artifact_path, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifact", disk_fills_up)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS, "--batch-size", "512"])  # 2 epochs of 4 steps
    run_id = runs_in_store()[0].info.run_id
    one_line_error(result, "cannot save checkpoints/", "No space left on device", "free disk space",
                   f"run {run_id} is FAILED with checkpoints/last.pt at epoch 1", f"`dmat teacher --resume {run_id}`")
    assert MlflowClient().get_run(run_id).info.status == "FAILED"
    monkeypatch.setattr(mlflow, "log_artifact", log_artifact)
    resumed = CliRunner().invoke(cli, ["teacher", "--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == [1, 2]


def read_only(folder: Path) -> list[str]:
    """A command prefix under which `folder` cannot be written. Permission bits bind a user other than root, so
    the test's chmod is enough: nothing. Root ignores them: a private read-only bind mount of `folder` (wherever
    the checkout lives), or a skip that says why."""
    if os.geteuid() != 0:
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "sh", "-c", script, str(folder)]
    probe = subprocess.run([*prefix, "sh", "-c", 'touch "$0/.probe"', str(folder)], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode == 0 or (folder / ".probe").exists():
        (folder / ".probe").unlink(missing_ok=True)
        pytest.skip("running as root, whom file permissions do not bind, and no read-only bind mount "
                    "(unshare --mount; mount -o remount,ro,bind) can be made here")
    return prefix


@pytest.fixture
def writable_again(tmp_path):
    """tmp_path, made writable again after the test so that it can be removed."""
    yield tmp_path
    subprocess.run(["chmod", "-R", "u+w", str(tmp_path)], check=False)


def dmat_in_read_only(cwd: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI="sqlite:///mlflow.db", PYTHONPATH=str(Path(dmat.__file__).parents[1]))
    return subprocess.run([*read_only(folder), sys.executable, "-m", "dmat", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_store_in_a_read_only_folder_is_one_line_at_once(writable_again):
    folder = writable_again / "readonly"
    folder.mkdir(mode=0o555)
    start = time.monotonic()
    proc = dmat_in_read_only(folder, folder, "teacher", *TINY_CLI_ARGS)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "tracking store sqlite:///mlflow.db cannot be created" in proc.stderr and "not writable" in proc.stderr
    assert time.monotonic() - start < 60 and os.listdir(folder) == []


@pytest.mark.slow
def test_a_read_only_store_is_one_line_before_training_and_before_the_report_writes(writable_again):
    folder = writable_again / "store"
    folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.set_experiment('dmat')"], check=True,
                   capture_output=True, timeout=120, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    (writable_again / "out").mkdir()
    for args in (["teacher", *TINY_CLI_ARGS], ["report", "--out-dir", str(writable_again / "out" / "report")]):
        proc = dmat_in_read_only(folder, folder, *args)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "cannot be written (attempt to write a readonly database)" in proc.stderr
    assert not (writable_again / "out" / "report").exists()


def test_a_store_that_turns_read_only_as_the_model_is_registered_is_one_line(store, monkeypatch):
    """What a store made read-only mid-training (chmod a-w mlflow.db) raises when the trained model is registered:
    SQLAlchemy's error inside MLflow's. Root ignores file modes, so the error is raised where the store raised it."""
    import sqlite3

    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    def read_only_now(*args, **kwargs):
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO registered_models", {},
                                                  sqlite3.OperationalError("attempt to write a readonly database"))
        except sqlalchemy.exc.OperationalError as exc:
            raise MlflowException(f"(sqlite3.OperationalError) {exc.orig}") from exc

    monkeypatch.setattr("dmat.tracking.registry.publish", read_only_now)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS])
    [run_id] = [run.info.run_id for run in runs_in_store()]
    one_line_error(result, f"tracking store {mlflow.get_tracking_uri()} became read-only",
                   "attempt to write a readonly database", "dmat runs --stale --mark-killed",
                   f"`dmat teacher --resume {run_id}`")



def test_a_store_that_turns_read_only_mid_run_is_one_line_that_says_the_run_still_shows_running(store, monkeypatch):
    """The store turned read-only for real (SQLite's query_only) as the trained model is registered: MLflow's SQL
    store logs two tracebacks (65 lines) before it raises, and the run cannot be marked FAILED: the one line says so
    and how to mark it, not that it is FAILED."""
    from sqlalchemy import event

    from dmat.tracking import registry

    engines = {mlflow.tracking._tracking_service.utils._get_store().engine,
               mlflow.tracking._model_registry.utils._get_store().engine}

    def read_only(connection, record, proxy):
        connection.execute("PRAGMA query_only = ON")

    def read_only_now(*args, publish=registry.publish, **kwargs):
        for engine in engines:
            event.listen(engine, "checkout", read_only)
        return publish(*args, **kwargs)

    monkeypatch.setattr(registry, "publish", read_only_now)
    try:
        result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS])
    finally:
        for engine in engines:
            if event.contains(engine, "checkout", read_only):
                event.remove(engine, "checkout", read_only)
    [run_id] = [run.info.run_id for run in runs_in_store()]
    one_line_error(result, "became read-only", f"run {run_id} could not be marked FAILED", "still shows RUNNING",
                   "`dmat runs --stale --mark-killed` marks it KILLED", f"`dmat teacher --resume {run_id}`")
    assert "is FAILED" not in result.stderr and MlflowClient().get_run(run_id).info.status == "RUNNING"


def test_a_server_gone_as_the_run_ends_says_the_run_still_shows_running(store, monkeypatch):
    """A tracking server that stops answering mid-run cannot take the run's FAILED either: the line must not say it
    is FAILED while the store says RUNNING."""
    from mlflow.exceptions import MlflowException

    from dmat.tracking import registry

    def gone(*args, **kwargs):
        raise MlflowException("API request to http://tracking:5000/api/2.0/mlflow/runs/update failed with exception "
                              "HTTPConnectionPool(host='tracking', port=5000): Max retries exceeded")

    monkeypatch.setattr(registry, "publish", gone)
    monkeypatch.setattr(MlflowClient, "set_terminated", gone)
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS])
    monkeypatch.undo()
    [run_id] = [run.info.run_id for run in runs_in_store()]
    one_line_error(result, "stopped answering", f"run {run_id} could not be marked FAILED", "still shows RUNNING")
    assert "is FAILED" not in result.stderr and MlflowClient().get_run(run_id).info.status == "RUNNING"


def test_an_evaluation_whose_dataset_tag_has_other_channels_or_too_many_samples_is_one_line_and_no_run(
        study, teacher_run_id):
    client, before = MlflowClient(), {run.info.run_id for run in runs_in_store()}
    client.set_tag(teacher_run_id, tracking.DATASET, "cifar10")
    try:
        result = CliRunner().invoke(cli, ["evaluate", "--run-id", teacher_run_id, "--num-samples", "80", "--steps", "4"])
    finally:
        client.set_tag(teacher_run_id, tracking.DATASET, "digits")
    one_line_error(result, f"run {teacher_run_id} is a 1-channel model", "cifar10, which has 3 channels",
                   "set the tag to the data set it trained on")
    result = CliRunner().invoke(cli, ["evaluate", "--run-id", teacher_run_id, "--num-samples", "1000000000", "--steps", "4"])
    one_line_error(result, "num-samples 1000000000 needs about", "GiB of memory available: use at most")
    most = int(result.stderr.split("use at most ")[1].split()[0])
    assert 0 < most < 1_000_000_000
    assert {run.info.run_id for run in runs_in_store()} == before

# ---------------------------------------------------------------- options and the smoke check


@pytest.mark.parametrize("args,message", [
    (["--device", "mps"], "MPS (Apple GPU) is not available"),
    (["--num-workers", "-1"], "num-workers must be >= 0"),
    (["--weight-decay", "-1"], "weight-decay must be >= 0"),
    (["--grad-clip", "-1"], "grad-clip must be >= 0"),
    (["--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["--base-channels", "0"], "base-channels and num-res-blocks must be positive"),
    (["--num-res-blocks", "0"], "base-channels and num-res-blocks must be positive"),
    (["--channel-mults", "0,1"], "channel-mults must be positive"),
])
def test_bad_options_are_one_line_and_no_run(store, args, message):
    if args[1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS, *args])
    one_line_error(result, message)
    assert runs_in_store() == []


class NonFinite(DiffusionLoss):
    def loss(self, model, x0, generator=None):
        loss, parts = super().loss(model, x0, generator)
        return loss * float("nan"), parts


def test_the_smoke_check_runs_before_the_run_exists(store):
    train, plan = tiny_plan(NonFinite)
    with pytest.raises(DmatError, match="first batch already gives a non-finite loss"):
        train_model(train, plan)
    assert runs_in_store() == []


def test_more_sample_steps_than_timesteps_is_said_and_logged(store, caplog):
    with caplog.at_level(logging.WARNING):
        run_id = train_teacher(tiny_train(epochs=1, batch_size=512, sample_steps=100), tiny_unet(), tiny_diffusion())
    assert "sample-steps 100 is more than the 20 timesteps" in caplog.text
    params = MlflowClient().get_run(run_id).data.params
    assert (params["sample_steps"], params["resolved.sample_steps"]) == ("100", "20")


# ---------------------------------------------------------------- memory


class SquaredError:
    """A loss without randomness (x0 from the network at t=0), so two ways of batching can be compared exactly."""

    def __init__(self, fits: int | None = None):
        self.fits, self.batch_sizes = fits, []

    def loss(self, model, x0, generator=None):
        if model.training:
            self.batch_sizes.append(x0.shape[0])
            if self.fits and x0.shape[0] > self.fits:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        out = model(x0, torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device))
        loss = ((out - x0) ** 2).mean()
        return loss, {"task_loss": loss.item()}


CFG = tiny_train(batch_size=100, epochs=2, precision="fp32")  # exact sums: bf16 rounds differently per micro-batch


def small_splits() -> DataSplits:
    """400 training images (4 batches of 100) and 100 validation images: enough steps to compare, quickly."""
    full = load_splits(CFG)
    return DataSplits(Subset(full.train, range(400)), Subset(full.val, range(100)), full.image_size, full.channels)


def losses_of(objective) -> list[float]:
    torch.manual_seed(0)
    model, recorder = UNet(tiny_unet(image_size=8)), MemoryRecorder()
    fit(model, GaussianDiffusion(tiny_diffusion()), objective, small_splits(), CFG, torch.device("cpu"), recorder)
    return [m[key] for _, m in sorted(recorder.metrics.items()) for key in ("train_loss", "val_loss")]


def gradient_of_one_step(micro_batch: int) -> torch.Tensor:
    """The (clipped) gradient the optimizer steps with, on one batch of 100 taken in micro-batches."""
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8))
    state = TrainingState(model, GaussianDiffusion(tiny_diffusion()), SquaredError(), CFG, micro_batch)
    seen = []
    state.optimizer.step = lambda: seen.extend(p.grad.flatten().clone() for p in state.trainable)
    state.step(model, torch.stack([small_splits().train[i] for i in range(100)]))
    return torch.cat(seen)


def test_a_batch_that_does_not_fit_is_halved_with_the_same_optimizer_steps():
    whole, halved = SquaredError(), SquaredError(fits=30)
    reference, accumulated = losses_of(whole), losses_of(halved)
    assert halved.batch_sizes[:3] == [100, 50, 25] and max(halved.batch_sizes[3:]) == 25  # the smoke check halves
    assert accumulated == pytest.approx(reference, rel=1e-6)
    full, in_quarters = gradient_of_one_step(100), gradient_of_one_step(25)
    assert (in_quarters - full).norm() / full.norm() < 1e-5  # float rounding, not a different step


def test_the_micro_batch_is_printed_and_logged(store, caplog):
    train, plan = tiny_plan(lambda d: SquaredError(fits=100), epochs=1)
    with caplog.at_level(logging.WARNING):
        run_id = train_model(train, plan)
    assert "a batch of 512 does not fit in cpu memory: each batch is taken in 8 micro-batches of up to 64" in caplog.text
    assert MlflowClient().get_run(run_id).data.metrics["micro_batch_size"] == 64


def test_under_mlflow_run_a_run_starts_in_its_runs_experiment_whatever_was_active_before(store):
    """`mlflow run` makes the run and names it in MLFLOW_RUN_ID; an experiment made active earlier in the same process
    (another command, another test) must not make MLflow refuse to start it."""
    client = mlflow.MlflowClient()
    made = client.create_run(client.create_experiment("made by mlflow run")).info.run_id
    mlflow.set_experiment("active before")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_RUN_ID", made)
        with tracking.tracked_run("report", {tracking.ROLE: tracking.REPORT}) as run:
            assert run.info.run_id == made
    assert client.get_run(made).info.status == "FINISHED"
