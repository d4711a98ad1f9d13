"""Team scale: a real PostgreSQL behind a real `mlflow server`, used through MLFLOW_TRACKING_URI, and two
runs writing to one sqlite store at the same time."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from conftest import TINY_CLI_ARGS, tiny_train
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.model import checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The PostgreSQL server binaries, installed from the Debian packages if missing (CI runs as root)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.skip("PostgreSQL is not installed and cannot be installed here (needs root and apt-get)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a loopback port; yields the SQLAlchemy URI of its `mlflow` database."""
    # not under the suite's temp folder (conftest): it is private to root, and postgres runs as its own user; beside
    # it in the machine's temp folder, removed at the end whatever happens
    shared_tmp = os.path.dirname(tempfile.gettempdir())
    bin_dir, root, port = postgres_bin(), Path(tempfile.mkdtemp(prefix="dmat-pg-", dir=shared_tmp)), free_port()
    try:
        yield from _cluster(bin_dir, root, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cluster(bin_dir: Path, root: Path, port: int):
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses to run as root
    if as_owner:
        shutil.chown(root, "postgres")
    data = root / "data"

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_owner, str(bin_dir / tool), *args], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` on PostgreSQL with artifacts served by the server itself, as `make server` runs it."""
    port, artifacts = free_port(), tmp_path_factory.mktemp("artifacts")
    log = open(artifacts.parent / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--backend-store-uri", postgres,
                             "--artifacts-destination", str(artifacts), "--serve-artifacts"],
                            stdout=log, stderr=subprocess.STDOUT,
                            # the server's own temp files (its db-init lock, upload buffers) go with pytest's tmp_path
                            env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("server-tmp"))})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_teacher_student_evaluation_round_trip_through_a_postgres_backed_server(server, tmp_path, monkeypatch,
                                                                                project_env):
    from dmat.evaluation.evaluate import evaluate_run
    from dmat.evaluation.features import train_feature_extractor
    from dmat.report.query import load_study
    from dmat.stages.distill import train_student

    monkeypatch.chdir(tmp_path)  # nothing may land in a local ./mlruns
    # MLflow's http artifact client leaves a temp folder behind when it logs a model through the server (seen here,
    # not yet traced): this test's temp files go with its tmp_path
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    experiment = "server"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)  # as a team would share one study
    mlflow.set_tracking_uri(server)

    cli = subprocess.run([sys.executable, "-m", "dmat", "teacher", *TINY_CLI_ARGS, "--experiment", experiment],
                         env={**project_env, "MLFLOW_TRACKING_URI": server}, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    teacher = tracking.find_runs("teacher")[0].info.run_id
    assert teacher in cli.stdout
    # the registry works through the server too: the teacher by alias, the student by version
    student = train_student(tiny_train(epochs=1), 0.5, "models:/dmat-digits-8px-teacher@latest", experiment,
                            student_steps=4)
    extractor = train_feature_extractor("digits", 8, epochs=1, device="cpu", experiment=experiment)
    evaluation = evaluate_run("models:/dmat-digits-8px-student-0.5-distill-random/1", feature_extractor_run_id=extractor,
                              experiment=experiment, num_samples=96, steps="4", batch_size=96, num_trajectories=4,
                              eps_timesteps=5, device="cpu")

    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert tracking.load_model(teacher).role == "teacher"
    assert tracking.load_model(student).model.config.size_factor == 0.5
    assert tracking.find_runs("student", {tracking.TEACHER_RUN_ID: teacher})[0].info.run_id == student
    study = load_study(experiment)
    assert set(study.models.run_id) == {teacher, student}
    assert list(study.evaluations.run_id) == [evaluation]
    assert MlflowClient().get_run(evaluation).data.metrics["fid"] > 0
    # the MLflow Model comes back through the server's artifact proxy; lineage and scores are there
    sampler = mlflow.pyfunc.load_model("models:/dmat-digits-8px-student-0.5-distill-random@best")
    assert sampler.predict(pd.DataFrame([{"num_images": 2, "steps": 4}])).shape == (2, 1, 8, 8)
    assert float(MlflowClient().get_model_version("dmat-digits-8px-student-0.5-distill-random", "1").tags["fid"]) > 0
    inputs = {i.dataset.name for i in MlflowClient().get_run(student).inputs.dataset_inputs}
    assert inputs == {"digits-8px-train", "digits-8px-validation"}


@pytest.mark.slow
def test_two_runs_writing_to_one_new_sqlite_store_at_once_both_keep_everything(store, project_env):
    env = {**project_env, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dmat", "teacher", *TINY_CLI_ARGS, "--epochs", "3",
                               "--seed", str(seed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = tracking.find_runs("teacher")
    assert len(runs) == 2
    for run in runs:
        steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2, 3]
        assert {"best_val_loss", "epochs_run", "num_parameters", "train_loss"} <= set(run.data.metrics)
        assert tracking.load_checkpoint(run.info.run_id, checkpoint.LAST)["epoch"] == 3
