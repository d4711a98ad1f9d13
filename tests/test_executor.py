"""Stages run where the executor puts them: local workers with their share of threads, or Ray tasks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import mlflow
import psutil
import pytest
from click.testing import CliRunner

from dmat.cli.main import cli
from dmat.study.executor import LocalExecutor, spawn_environment

from test_pipeline import TINY_PIPELINE


def _environment(env):
    return {name: os.environ.get(name) for name in env}


def test_a_stage_starts_with_its_slots_threads_and_the_environment_is_restored():
    before = os.environ.get("OMP_NUM_THREADS")
    seen = LocalExecutor(2).run(lambda env: env)
    assert seen["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) and seen["DMAT_WORKER"] in ("0", "1")
    with spawn_environment(seen):
        assert _environment(seen) == seen  # what the stage process copies when it starts
    assert os.environ.get("OMP_NUM_THREADS") == before


def test_a_stage_that_runs_alone_gets_every_thread_and_waits_for_the_others():
    """The teacher, the timings and the report run with nothing beside them: they take every slot, so every thread
    (the teacher trained on one of two threads before); a stage started meanwhile waits for a slot."""
    import threading
    import time

    runner, started = LocalExecutor(2), threading.Event()
    per_slot = max(1, (os.cpu_count() or 1) // 2)

    def long_stage(env):
        started.set()
        time.sleep(0.3)
        return env

    alone = threading.Thread(target=lambda: seen.update(runner.run(long_stage, alone=True)))
    seen: dict = {}
    alone.start()
    started.wait()
    start = time.perf_counter()
    runner.run(lambda env: env)  # waits until the lone stage gives its slots back
    assert time.perf_counter() - start > 0.15
    alone.join()
    assert seen["OMP_NUM_THREADS"] == str(2 * per_slot)


def _models_once(runs):
    finished = runs[runs["status"] == "FINISHED"]
    counts = finished["tags.dmat.role"].value_counts().to_dict()
    # the real-vs-real floors (2 spaces x 2 references) are computed once and shared by every evaluation
    assert counts == {"pipeline": 1, "teacher": 1, "student": 2, "feature-extractor": 1, "evaluation": 3, "cost": 1,
                      "report": 1, "students-loop": 1, "floor": 4}
    for run_id in finished[finished["tags.dmat.role"].isin(["teacher", "student"])]["run_id"]:
        history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val_loss")
        epochs = [m.step for m in history]
        assert len(epochs) == len(set(epochs)), f"run {run_id} logged an epoch twice: {epochs}"


@pytest.mark.slow
def test_two_local_workers_run_the_study_with_every_model_once(store):
    result = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE, "--workers", "2", "--reuse-any-commit", "true"])
    assert result.exit_code == 0, result.output + str(result.exception)
    runs = mlflow.search_runs(search_all_experiments=True)
    _models_once(runs)
    [pipeline] = runs[runs["tags.dmat.role"] == "pipeline"]["run_id"]
    assert mlflow.get_run(pipeline).data.params["workers"] == "2"
    stages = runs[(runs["tags.mlflow.parentRunId"] == pipeline) | (runs["tags.dmat.launched_by"] == pipeline)]
    workers = stages["tags.dmat.worker"].dropna()
    assert set(workers) <= {"0", "1"} and len(workers) >= 3  # every stage ran in a slot and says which


@pytest.fixture
def ray_pipeline(store, project_env, tmp_path):
    """`dmat pipeline --executor ray` on a local Ray instance, started in a process of its own (Ray's in-process
    state and signal handlers stay out of the test process), with Ray's temp files in a short folder."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dmat[ray]' (make test installs it)")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**project_env, "RAY_TMPDIR": ray_tmp}

    def start(*options: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dmat", "pipeline", *TINY_PIPELINE, "--executor", "ray",
                                 "--reuse-any-commit", "true", *options], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield start
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_tiny_study_on_a_local_ray_instance_runs_every_model_once(ray_pipeline):
    process = ray_pipeline()
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    _models_once(runs)
    [pipeline] = runs[runs["tags.dmat.role"] == "pipeline"]["run_id"]
    assert mlflow.get_run(pipeline).data.params["executor"] == "ray"


def _ray_worker_of(pid: int) -> psutil.Process:
    """The Ray worker process a stage's training process runs under (its nearest `ray::` ancestor)."""
    for process in psutil.Process(pid).parents():
        if process.name().startswith("ray::") or "ray::" in " ".join(process.cmdline()[:1]):
            return process
    raise AssertionError(f"process {pid} runs under no Ray worker")


def _kill_the_worker_once_trained(process: subprocess.Popen, role: str, epochs: int) -> list[str]:
    """Kill the Ray worker that trains the runs of `role` once each has `epochs` epochs logged; their ids."""
    client = mlflow.MlflowClient()
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`dmat.role` = '{role}'")
        if not runs.empty and all(len(client.get_metric_history(run_id, "val_loss")) >= epochs
                                  for run_id in runs.run_id) and len(runs) == (1 if role == "teacher" else 2):
            _ray_worker_of(int(runs["tags.dmat.pid"][0])).kill()
            return list(runs.run_id)
        time.sleep(0.5)
    raise AssertionError(f"the {role} runs never reached {epochs} epochs while the study ran")


@pytest.mark.slow
def test_a_stage_whose_ray_worker_is_killed_is_retried_and_continues_its_runs(ray_pipeline):
    """The teacher's worker, then the students loop's: each retried task continues the runs it had begun (a loop
    continues its stopped students), so every model is logged once with each of its epochs once."""
    process = ray_pipeline("--teacher-epochs", "12", "--student-epochs", "12")
    [teacher] = _kill_the_worker_once_trained(process, "teacher", 2)
    students = _kill_the_worker_once_trained(process, "student", 2)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    _models_once(runs)
    finished = runs[runs["status"] == "FINISHED"]
    assert list(finished[finished["tags.dmat.role"] == "teacher"]["run_id"]) == [teacher]  # the same runs, continued
    assert sorted(finished[finished["tags.dmat.role"] == "student"]["run_id"]) == sorted(students)
    [loop] = finished[finished["tags.dmat.role"] == "students-loop"]["run_id"]
    assert set(runs[runs["run_id"].isin(students)]["tags.dmat.launched_by"]) == {loop}  # by the loop that ended them
    for run_id in [teacher, *students]:
        epochs = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")]
        assert len(epochs) == len(set(epochs)) == 12, epochs


@pytest.mark.parametrize("reaped", [True, False])
def test_a_stage_process_gets_sigterm_when_the_process_that_started_it_is_killed(tmp_path, reaped):
    """What a stage process does when its pipeline dies by kill -9: it is told (SIGTERM), as on Ctrl-C, also
    through a process in between (`mlflow run` starts the stage's command), and also while the dead pipeline is a
    zombie its own parent has not reaped yet."""
    said = tmp_path / "said"
    (tmp_path / "stage.py").write_text(
        "import signal, sys, time\n"
        "from dmat import runtime\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(said)!r}, 'w').write('SIGTERM'), sys.exit(0)))\n"
        "runtime.stop_with_starter()\n"
        f"open({str(said)!r} + '.ready', 'w').close()\n"
        "time.sleep(60)\n")
    (tmp_path / "between.py").write_text(
        f"import subprocess, sys\nsubprocess.run([sys.executable, {str(tmp_path / 'stage.py')!r}])\n")
    (tmp_path / "pipeline.py").write_text(
        "import os, subprocess, sys, time\n"
        "from dmat import runtime\n"
        f"subprocess.Popen([sys.executable, {str(tmp_path / 'between.py')!r}], env={{**os.environ, **runtime.watched_by_me()}})\n"
        "time.sleep(60)\n")
    pipeline = subprocess.Popen([sys.executable, str(tmp_path / "pipeline.py")])
    deadline = time.monotonic() + 60
    while not (tmp_path / "said.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.kill()
    if reaped:
        pipeline.wait()
    while not said.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.wait()
    assert said.read_text() == "SIGTERM"
