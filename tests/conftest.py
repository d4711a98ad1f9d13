"""Shared fixtures: a temporary MLflow store per test, and one tiny real teacher per session.

Everything runs the real code path on the bundled digits at 8x8 with a tiny UNet, so a whole
train/evaluate cycle takes seconds on a CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import mlflow
import pytest

from dmat.config import TrainConfig
from dmat.config.options import to_cli_args
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig

TINY_TRAIN = dict(dataset="digits", image_size=8, epochs=2, batch_size=128, sample_steps=4, num_sample_images=4,
                  save_interval=1, device="cpu")
TINY_UNET = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.0)
TINY_DIFFUSION = dict(timesteps=20)
# the same settings as `dmat teacher` arguments
TINY_CLI_ARGS = [arg for cls, tiny in ((TrainConfig, TINY_TRAIN), (UNetConfig, TINY_UNET),
                                       (DiffusionConfig, TINY_DIFFUSION))
                 for arg in to_cli_args(cls(**tiny), only=tuple(tiny))]


# ---------------------------------------------------------------- the temp folder is left as found
# The suite (and every process it starts) writes temp files to a private folder made here, so other processes on
# the machine cannot interfere with the check; at the end anything left in it but pytest's own tmp_path folders
# fails the run. xdist workers inherit the folder from the controller, which alone checks it.
_TMP_ENV = "DMAT_TEST_TMPDIR"
# pytest's own tmp_path folders; torch's per-user compile cache, which importing torchvision.models creates and torch
# keeps between processes on purpose (like ~/.cache): neither is a leak of dmat's
_KEPT = ("pytest-of-", "torchinductor_")


def _private_tmp() -> Path:
    if not os.environ.get(_TMP_ENV):
        _remove_folders_of_killed_sessions(Path(tempfile.gettempdir()))
        os.environ[_TMP_ENV] = tempfile.mkdtemp(prefix=f"dmat-tests-{os.getpid()}-")
    os.environ["TMPDIR"] = os.environ[_TMP_ENV]
    tempfile.tempdir = None  # gettempdir() caches its answer: ask again
    assert tempfile.gettempdir() == os.environ[_TMP_ENV]
    return Path(os.environ[_TMP_ENV])


def _remove_folders_of_killed_sessions(temp: Path) -> None:
    """A session killed before its end (timeout, kill -9) could not remove its folder: the next one does."""
    for folder in temp.glob("dmat-tests-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc/self").exists():
            shutil.rmtree(folder, ignore_errors=True)


def pytest_configure(config):
    # The tests press Ctrl-C (SIGINT to this process and to the ones they start). A suite started in the background
    # by a shell without job control (`make test &` in a script, nohup) inherits SIGINT ignored, and so would every
    # process it starts: Ctrl-C would not reach them. A terminal's Ctrl-C is what they test: restore it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not hasattr(config, "workerinput"):
        os.environ.pop(_TMP_ENV, None)  # a fresh folder per session, also when pytest runs inside a test
    config._dmat_tmp = _private_tmp()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # pytest -n N: the cores shared out, in this worker and the processes its tests start
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def _left_in(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir() if not entry.name.startswith(_KEPT)}


# entry left in the temp folder -> the test after which it first appeared, so that a leak names its test; xdist
# workers write theirs to a file in the folder (a _KEPT name) for the controller to read
_FIRST_SEEN: dict[str, str] = {}
_SEEN_FILE = "pytest-of-dmat-first-seen-{}.txt"


@pytest.fixture(autouse=True)
def _note_what_each_test_leaves(request):
    yield
    folder = getattr(request.config, "_dmat_tmp", None)
    if folder is None or not folder.exists():
        return
    new = {name: request.node.nodeid for name in _left_in(folder) - _FIRST_SEEN.keys()}
    _FIRST_SEEN.update(new)
    worker = getattr(request.config, "workerinput", {}).get("workerid")
    if new and worker:
        with open(folder / _SEEN_FILE.format(worker), "a") as seen:
            seen.writelines(f"{name} {test}\n" for name, test in new.items())


def _first_seen(folder: Path) -> dict[str, str]:
    seen = dict(_FIRST_SEEN)
    for file in folder.glob(_SEEN_FILE.format("*")):
        seen.update(line.split(" ", 1) for line in file.read_text().splitlines())
    return seen


@pytest.hookimpl(trylast=True)  # after session fixtures are torn down
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or not hasattr(config, "_dmat_tmp"):
        return
    folder = config._dmat_tmp
    left, seen = sorted(_left_in(folder)), _first_seen(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if left:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        named = [f"{name} (after {seen.get(name, 'the session fixtures')})" for name in left[:20]]
        message = f"the suite left {len(left)} entries in the temp folder: {', '.join(named)}"
        if reporter:
            reporter.write_line(f"FAILED: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tiny_train(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAIN, **overrides})


def tiny_unet(**overrides) -> UNetConfig:
    return UNetConfig(**{**TINY_UNET, **overrides})


def tiny_diffusion(**overrides) -> DiffusionConfig:
    return DiffusionConfig(**{**TINY_DIFFUSION, **overrides})


def _point_at(path: Path, mp: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{path}/mlflow.db"
    mp.chdir(path)
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_EXPERIMENT_NAME", "dmat-test")
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment exports it for child processes
    mlflow.set_tracking_uri(uri)
    return uri


def _end_active_runs():
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """An empty MLflow store in a temporary folder (also the working directory); yields its URI."""
    uri = _point_at(tmp_path, monkeypatch)
    yield uri
    _end_active_runs()


@pytest.fixture(scope="session")
def _study_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("study")


@pytest.fixture(scope="session")
def teacher_run_id(_study_dir) -> str:
    """A tiny teacher trained once per session in the shared study store."""
    from dmat.stages.teacher import train_teacher

    with pytest.MonkeyPatch.context() as mp:
        _point_at(_study_dir, mp)
        run_id = train_teacher(tiny_train(), tiny_unet(), tiny_diffusion())
        _end_active_runs()
    return run_id


@pytest.fixture
def study(_study_dir, teacher_run_id, monkeypatch) -> str:
    """The shared session store holding the tiny teacher; yields its URI."""
    uri = _point_at(_study_dir, monkeypatch)
    yield uri
    _end_active_runs()


@pytest.fixture
def project_env() -> dict:
    """Environment for subprocesses (`mlflow run`, `dmat`): the venv first on PATH."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env
