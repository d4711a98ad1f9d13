"""Issue 25: nothing left behind, no hang, no silent wrong result.

A store lock held by another process, stale runs of roles no `--resume` continues, the temp folder after a
command, resolved values on a resume, relative data set folders, changed lineage on a resume.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import dmat
from dmat import tracking
from dmat.cli.main import cli
from dmat.tracking import store as store_module


def one_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO mlflow." not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------- the store lock


def test_a_store_lock_held_by_another_process_times_out_in_one_line_naming_it(store, monkeypatch):
    assert CliRunner().invoke(cli, ["runs"]).exit_code == 0  # the store exists
    lock = os.path.join(os.getcwd(), ".mlflow.db.dmat-lock")
    holder = subprocess.Popen([sys.executable, "-c", f"import time; from filelock import FileLock; "
                               f"lock = FileLock({lock!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 1)
        start = time.monotonic()
        line = one_line(CliRunner().invoke(cli, ["runs"]))
        assert time.monotonic() - start < 30
        assert f"tracking store {store} is locked" in line and lock in line and "stop it" in line, line
    finally:
        holder.kill()
        holder.wait()


def test_opening_a_store_leaves_no_lock_file_in_the_temp_folder(store):
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    assert CliRunner().invoke(cli, ["runs"]).exit_code == 0
    assert {name for name in set(os.listdir(tempfile.gettempdir())) - before if name.startswith("dmat-store")} == set()


# ---------------------------------------------------------------- stale runs


def _stale_run(role: str) -> str:
    experiment = mlflow.set_experiment("dmat-test").experiment_id
    proc = subprocess.Popen(["true"])
    proc.wait()
    tags = {tracking.ROLE: role, tracking.RUN_NAME: role, tracking.OWNER_HOST: socket.gethostname(),
            tracking.OWNER_PID: str(proc.pid), tracking.OWNER_STARTED: "1"}
    return MlflowClient().create_run(experiment, tags=tags).info.run_id


def test_mark_killed_suggests_only_commands_that_exist(store):
    runs = {role: _stale_run(role) for role in (tracking.TEACHER, tracking.STUDENT, tracking.PIPELINE,
                                                 tracking.EVALUATION, tracking.REPORT, tracking.FEATURE_EXTRACTOR)}
    marked = CliRunner().invoke(cli, ["runs", "--stale", "--mark-killed"])
    assert marked.exit_code == 0, marked.output
    lines = {role: next(line for line in marked.output.splitlines() if f"marked {run_id}" in line)
             for role, run_id in runs.items()}
    assert f"`dmat teacher --resume {runs['teacher']}`" in lines["teacher"]
    assert f"`dmat distill --resume {runs['student']}`" in lines["student"]
    for role in (tracking.PIPELINE, tracking.EVALUATION, tracking.REPORT, tracking.FEATURE_EXTRACTOR):
        assert "--resume" not in lines[role], lines[role]
        command = lines[role].split("`")[1].split()
        assert command[0] == "dmat" and command[1] in cli.commands, lines[role]


# ---------------------------------------------------------------- params


def test_a_teacher_on_device_auto_logs_its_model_without_changing_a_param(store, caplog):
    from conftest import tiny_diffusion, tiny_train, tiny_unet

    from dmat.stages.teacher import train_teacher

    with caplog.at_level(logging.WARNING):
        run_id = train_teacher(tiny_train(device="auto", epochs=1), tiny_unet(), tiny_diffusion())
    assert "Failed to log model config" not in caplog.text
    run = MlflowClient().get_run(run_id)
    assert run.data.params["device"] == "auto" and run.info.status == "FINISHED"


# ---------------------------------------------------------------- data sets


def _image_folder(folder, count: int):
    import numpy as np
    from PIL import Image

    (folder / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / "a" / f"{i:02d}.png")


def test_a_relative_folder_data_set_is_logged_as_the_absolute_folder_and_a_small_one_is_no_oom(store, tmp_path,
                                                                                                caplog):
    from conftest import tiny_diffusion, tiny_train, tiny_unet

    from dmat.stages.teacher import train_teacher

    _image_folder(tmp_path / "imgs", 20)  # fewer images than one batch (128)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "imgs", tmp_path / "elsewhere" / "link")
    with caplog.at_level(logging.WARNING):
        run_id = train_teacher(tiny_train(dataset="folder:elsewhere/../elsewhere/link", epochs=1), tiny_unet(),
                               tiny_diffusion())
    run = MlflowClient().get_run(run_id)
    expected = f"folder:{os.path.realpath(tmp_path / 'imgs')}"
    assert run.data.params["dataset"] == expected and run.data.tags[tracking.DATASET] == expected
    assert "does not fit" not in caplog.text


# ---------------------------------------------------------------- a resume keeps what a run is


def test_a_student_resumed_as_another_method_or_of_another_teacher_is_refused(study, teacher_run_id):
    from conftest import tiny_train

    from dmat.stages.distill import train_student

    student = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, student_steps=4)
    MlflowClient().set_terminated(student, "KILLED")
    for args, change in ((["--method", "scratch"], "method distill -> scratch"),
                         (["--teacher-run-id", "0" * 32], f"teacher_run_id {teacher_run_id} -> {'0' * 32}"),
                         (["--kd-weight", "0.5"], "kd_weight 1 -> 0.5")):
        line = one_line(CliRunner().invoke(cli, ["distill", "--resume", student, *args]))
        assert f"run {student} was started with other settings ({change})" in line, line
    assert MlflowClient().get_run(student).data.tags[tracking.METHOD] == "distill"
    assert not any(key.startswith("resolved.method") for key in MlflowClient().get_run(student).data.params)


# ---------------------------------------------------------------- a tracking server gone mid-run


class _Gone(BaseHTTPRequestHandler):
    """A tracking server that says it is healthy, then answers every API call 503 (it went away behind a proxy)."""

    def do_GET(self):
        self.send_response(200 if self.path.startswith("/health") else 503)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_tracking_server_gone_mid_run_fails_within_minutes_not_twenty(store, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")  # the user's own value is kept
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        start = time.monotonic()
        line = one_line(CliRunner().invoke(cli, ["runs"]))
        assert time.monotonic() - start < 90
        assert f"tracking server {uri} stopped answering" in line and "dmat runs --stale" in line, line
    finally:
        server.shutdown()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "20"


# ---------------------------------------------------------------- secrets


def test_a_sweep_workers_command_line_carries_no_storage_password_and_the_worker_still_gets_it(monkeypatch):
    from dmat.config import SweepConfig
    from dmat.study import sweep

    url = "postgresql://me:hunter2@db.example:5432/optuna"
    command = sweep._worker_command(SweepConfig(storage=url, workers=2), 3, "parent", None, 1)
    assert "hunter2" not in " ".join(command) and "postgresql://me:***@db.example:5432/optuna" in command
    opened = []
    monkeypatch.setattr(sweep, "storage", opened.append)
    monkeypatch.setattr(sweep.optuna, "load_study", _stop)
    monkeypatch.setenv(sweep.STORAGE_ENV, url)
    with pytest.raises(LookupError):
        sweep.work(SweepConfig(storage="postgresql://me:***@db.example:5432/optuna"), 3, "parent", None)
    assert opened == [url]


def _stop(**kwargs):
    raise LookupError("no study: the test stops here")


def test_a_folder_data_set_tag_through_dot_dot_or_a_symlink_is_not_followed(tmp_path, caplog):
    from conftest import tiny_unet

    from dmat.errors import DmatError
    from dmat.evaluation import real_data
    from dmat.model.unet import UNet

    _image_folder(tmp_path / "imgs", 4)
    os.symlink(tmp_path / "imgs", tmp_path / "link")
    model = UNet(tiny_unet(image_size=8, in_channels=3))
    for tag in (f"folder:{tmp_path}/link", f"folder:{tmp_path}/imgs/../imgs", "folder:imgs"):
        loaded = tracking.LoadedModel("r1", "teacher", model, None, {tracking.DATASET: tag}, {})
        with pytest.raises(DmatError, match=f"run r1 names the image folder .* which is not its real absolute path "
                                            f"\\({tmp_path if tag != 'folder:imgs' else ''}"):
            real_data.model_data(loaded)


def _model_run(dataset: str, channels: int, logged: str | None) -> str:
    """A teacher-like run (random weights) tagged with `dataset` that logged the splits of `logged` as its dataset
    inputs the way training does (None: none, as before dmat logged them)."""
    from conftest import tiny_diffusion, tiny_unet

    from dmat.config import TrainConfig
    from dmat.data import load_splits
    from dmat.model import checkpoint
    from dmat.model.diffusion import GaussianDiffusion
    from dmat.model.unet import UNet
    from dmat.tracking import lineage

    tags = {tracking.ROLE: "teacher", tracking.METHOD: "teacher", tracking.DATASET: dataset, tracking.IMAGE_SIZE: "8"}
    with tracking.tracked_run("teacher-like", tags) as run:
        if logged:
            cfg = TrainConfig(dataset=logged, image_size=8)
            lineage.log_training_data(cfg, load_splits(cfg))
        model = UNet(tiny_unet(image_size=8, in_channels=channels))
        tracking.save_checkpoint(checkpoint.model_checkpoint(model, GaussianDiffusion(tiny_diffusion()),
                                                             model.state_dict()), checkpoint.BEST)
    return run.info.run_id


EVALUATE_FAST = ["--num-samples", "80", "--steps", "4", "--batch-size", "40", "--num-trajectories", "3",
                 "--eps-timesteps", "5", "--device", "cpu"]


def test_a_dataset_tag_cannot_point_evaluate_all_at_a_folder_it_did_not_train_on(store, tmp_path, monkeypatch):
    """Issue 31: whoever could set a tag made `dmat evaluate --all` read any image folder and upload 8 of its images;
    with folder:/etc the error listed /etc's subfolders. Refused now before anything is read or any run made."""
    from dmat.data import load_dataset
    from dmat.errors import DmatError
    from dmat.evaluation import real_data

    for name in ("trained", "private"):
        _image_folder(tmp_path / name, 20)
    (tmp_path / "etc" / "secret-subfolder").mkdir(parents=True)  # like /etc: subfolders, no images
    trained, private, etc = (os.path.realpath(tmp_path / name) for name in ("trained", "private", "etc"))
    model = _model_run(f"folder:{trained}", 3, logged=f"folder:{trained}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the checkpoint's download bar
    read, load_splits = [], real_data.load_splits
    monkeypatch.setattr(real_data, "load_splits", lambda cfg, *a: read.append(cfg.dataset) or load_splits(cfg, *a))
    for tag in (f"folder:{private}", f"folder:{etc}"):
        MlflowClient().set_tag(model, tracking.DATASET, tag)
        line = one_line(CliRunner().invoke(cli, ["evaluate", "--all", *EVALUATE_FAST]))
        assert line == (f"error: model run {model} is tagged dmat.dataset={tag} at 8px but logged "
                        f"'folder:{trained}-8px-validation' as its input: dmat evaluates a model only on the data "
                        "its run logged that it trained on, and reads no other")
    MlflowClient().set_terminated(model, "KILLED")  # out of --all's way
    unlogged = _model_run(f"folder:{private}", 3, logged=None)  # no inputs: nothing shows what it trained on
    line = one_line(CliRunner().invoke(cli, ["evaluate", "--all", *EVALUATE_FAST]))
    assert f"model run {unlogged} is tagged dmat.dataset=folder:{private} at 8px but logged no dataset inputs" in line
    assert read == [] and tracking.find_runs(tracking.EVALUATION, status=None) == []
    with pytest.raises(DmatError, match="holds no images in class subfolders") as listed:
        load_dataset(f"folder:{etc}", 8)  # a folder named by the user: its content is not listed either
    assert "secret" not in str(listed.value)


def test_an_evaluation_uses_only_the_images_whose_digest_its_model_logged(store, tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from dmat.errors import DmatError
    from dmat.evaluation import real_data
    from dmat.evaluation.evaluate import evaluate_run

    _image_folder(tmp_path / "imgs", 20)
    folder = os.path.realpath(tmp_path / "imgs")
    run_id = _model_run(f"folder:{folder}", 3, logged=f"folder:{folder}")
    data = real_data.model_data(tracking.load_model(run_id))  # the images it trained on: read and used
    assert (len(data.train), len(data.val), data.test) == (18, 2, None)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "00.png")  # changed since
    with pytest.raises(DmatError, match=rf"^the (validation|train) images of folder:{folder}-8px-(validation|train) "
                                        rf"are not the ones model run {run_id} logged that it trained on \(digest "):
        evaluate_run(run_id, num_samples=80, steps="4", batch_size=40, device="cpu")
    assert tracking.find_runs(tracking.EVALUATION, status=None) == []  # no run: nothing uploaded


# ---------------------------------------------------------------- reports


def test_a_report_of_a_store_with_no_evaluation_says_at_the_top_why_and_what_to_run(store, tmp_path, caplog):
    from test_robustness import fake_teacher

    fake_teacher()
    result = CliRunner().invoke(cli, ["report", "--out-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    said = page.index("No model is evaluated yet")
    assert "dmat evaluate --all" in page[said:said + 400] and said < page.index("<table")
    assert "No model is evaluated yet" in caplog.text  # a warning: on the terminal too


def test_a_read_only_report_folder_is_one_line(store, tmp_path):
    from test_robustness import fake_teacher, read_only

    fake_teacher()
    (tmp_path / "reports").mkdir(mode=0o555)
    prefix = read_only(tmp_path / "reports")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(dmat.__file__))}  # the dmat under test
    proc = subprocess.run([*prefix, sys.executable, "-m", "dmat", "report", "--out-dir", "reports/r"], env=env,
                          capture_output=True, text=True, timeout=300)
    (tmp_path / "reports").chmod(0o755)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO mlflow." not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "report folder reports/r cannot be written" in lines[0] and "--out-dir" in lines[0], lines[0]
