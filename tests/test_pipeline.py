"""The whole study in one command: every stage is an MLflow project run, and reruns reuse them."""

import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from dmat import tracking
from dmat.cli.main import cli
from dmat.config import PipelineConfig, TrainConfig
from dmat.errors import DmatError
from dmat.tracking import lineage

ROOT = Path(__file__).resolve().parents[1]
TINY_PIPELINE = ["--sizes", "0.3 0.5", "--image-size", "8", "--teacher-epochs", "1", "--student-epochs", "1",
                 "--base-channels", "8", "--timesteps", "20", "--num-samples", "80", "--steps", "4",
                 "--seeds", "0", "--steps-grid", "2,4", "--device", "cpu", "--inits", "random", "--methods", "distill"]


def _roles() -> dict[str, int]:
    runs = mlflow.search_runs(search_all_experiments=True)
    return runs["tags.dmat.role"].value_counts().to_dict()


def _as_mlflow_params(args: list[str]) -> list[str]:
    """["--sizes", "0.5", ...] -> ["-P", "sizes=0.5", ...]: the same settings for the `main` entry point."""
    return [x for flag, value in zip(args[::2], args[1::2]) for x in ("-P", f"{flag[2:].replace('-', '_')}={value}")]


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_reuses_them(store, project_env, tmp_path, monkeypatch):
    source = lineage.Source.of(ROOT)  # the commit the stages run at, and whether the checkout has changes
    # first through the MLproject main entry point, as `mlflow run .` does ...
    first = subprocess.run(["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "dmat-test",
                            "--storage-dir", str(tmp_path),
                            *_as_mlflow_params(TINY_PIPELINE)], env=project_env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = _roles()
    assert after_first == {"pipeline": 1, "teacher": 1, "student": 2, "feature-extractor": 1, "evaluation": 3,
                           "cost": 1, "report": 1, "students-loop": 1, "floor": 4}  # floors: computed once, shared

    # ... then through the CLI: the same stages with the same parameters are reused. The venv is not on
    # PATH (as when .venv/bin/dmat is called directly): the stages must still run in this interpreter.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    # stages are reused at the same commit of a clean checkout (CI's clone); uncommitted changes (a developer's
    # tree) reuse nothing unless --reuse-any-commit (tests/test_lineage.py checks the difference itself)
    second = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE, *(["--reuse-any-commit"] if source.dirty else [])])
    assert second.exit_code == 0, second.output + str(second.exception)
    after_second = _roles()
    # nothing is trained or evaluated again: one more pipeline run, fresh side-by-side timings and report only
    assert after_second == {**after_first, "pipeline": 2, "cost": 2, "report": 2}
    summary = [line.split() for line in second.output.splitlines() if line.split()[2:3] == ["run"]]
    reused = [words[0] for words in summary if words[1] == "reused"]
    assert reused[0] == "teacher" and sorted(reused[1:]) == [
        "evaluate_student_distill_0.3", "evaluate_student_distill_0.5", "evaluate_teacher", "student_distill_0.3",
        "student_distill_0.5"]

    runs = mlflow.search_runs(search_all_experiments=True)
    pipelines = runs[runs["tags.dmat.role"] == "pipeline"].sort_values("start_time")
    assert list(pipelines["metrics.stages_reused"]) == [0, 6]
    assert pipelines.iloc[0]["tags.mlflow.project.entryPoint"] == "main"
    first_pipeline = pipelines.iloc[0]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == first_pipeline]
    # the two students were trained in one loop sharing the teacher's pass: the `students` stage, nested under the
    # pipeline; the models are top-level runs (rows of the MLflow UI's runs table), each tagged with the run that
    # launched it: the teacher with the pipeline, the students with their loop
    [loop] = nested[nested["tags.mlflow.project.entryPoint"] == "students"]["run_id"]
    assert set(nested["tags.dmat.role"].dropna()) == {"evaluation", "cost", "report", "students-loop"}
    assert all(nested["status"] == "FINISHED")
    models = runs[runs["tags.dmat.role"].isin(["teacher", "student"])]
    assert models["tags.mlflow.parentRunId"].isna().all()
    [teacher_launcher] = runs[runs["tags.dmat.role"] == "teacher"]["tags.dmat.launched_by"]
    assert teacher_launcher == first_pipeline
    students = runs[runs["tags.dmat.role"] == "student"]
    assert set(students["tags.dmat.launched_by"]) == {loop}
    assert students["tags.dmat.stage_key"].nunique() == 2  # each stands for its own distill stage: reused above
    assert set(students["tags.dmat.teacher_run_id"]) == {runs[runs["tags.dmat.role"] == "teacher"].iloc[0]["run_id"]}
    assert sorted(students["tags.dmat.size_factor"]) == ["0.3", "0.5"]
    # stages carry the commit they ran at, and dmat's names, not MLflow's random ones
    for stage_runs in (nested, models):
        assert set(stage_runs["tags.mlflow.source.git.commit"]) == {source.commit}
        assert set(stage_runs["tags.dmat.source_dirty"]) == {str(source.dirty).lower()}
    assert sorted(students["tags.mlflow.runName"]) == ["student-0.3-distill-digits-8px", "student-0.5-distill-digits-8px"]


@pytest.mark.parametrize("args,message", [
    (["--sizes", "0 0.5"], "size factor must be between"),
    (["--lr", "2"], "lr must be in (0, 1)"),
    (["--lr-warmup-epochs", "12"], "lr-warmup-epochs must be in [0, epochs)"),
    (["--methods", "magic"], "methods must be among distill, scratch"),
    (["--inits", "random magic"], "inits must be among random, pruned"),
    (["--teacher-epochs", "0"], "teacher-epochs must be a positive integer"),
    (["--seeds", "0 0"], "seeds must be distinct integers"),
    (["--student-budget", "forever"], "student-budget must be one of fixed, teacher, early-stopping"),
    (["--precision", "fp16"], "precision must be auto, fp32, bf16"),
])
def test_pipeline_bad_input_is_one_line_and_writes_nothing(store, args, message):
    result = CliRunner().invoke(cli, ["pipeline", *args])
    assert result.exit_code == 2 and message in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


# Sourced by every non-interactive bash, so by each stage's `bash -c "PYTHONPATH=src python -m dmat ..."`
# that mlflow.projects.run starts: the students' shared loop dies before it gets going, every other stage
# runs the real command.
KILL_THE_STUDENTS = """
python() {
  if [[ " $* " == *" dmat students "* ]]; then
    echo "test: the students' process is killed" >&2
    return 3
  fi
  command python "$@"
}
"""


@pytest.mark.slow
def test_a_failed_student_stage_is_reported_while_the_rest_runs(store, tmp_path, monkeypatch):
    (tmp_path / "bash_env.sh").write_text(KILL_THE_STUDENTS)
    monkeypatch.setenv("BASH_ENV", str(tmp_path / "bash_env.sh"))
    result = CliRunner().invoke(cli, ["pipeline", *TINY_PIPELINE[:-4], "--inits", "random pruned"])

    assert result.exit_code == 2, result.output + str(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 4 stage(s) failed: rerun the same command to retry them"], result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()  # the stages, then "pipeline run ID" and the closing lines (study.ending)
    at = next(i for i, line in enumerate(out) if line.startswith("pipeline run "))
    lines, last = out[:at], out[at]
    table = {words[0]: words for words in map(str.split, lines) if words[-2:-1] == ["run"]}  # label ... run ID
    assert list(table)[0] == "teacher" and list(table)[-2:] == ["cost", "report"]
    assert sorted(list(table)[1:-2]) == ["evaluate_teacher", "student_distill_0.3", "student_distill_0.3_pruned",
                                         "student_distill_0.5", "student_distill_0.5_pruned"]
    runs = mlflow.search_runs(search_all_experiments=True)
    [pipeline_id] = runs[runs["tags.dmat.role"] == "pipeline"]["run_id"]
    loops = runs[runs["tags.mlflow.project.entryPoint"] == "students"].set_index("params.init")  # one loop per init
    for label in table:  # each student's line names its failed loop
        if label.startswith("student"):
            loop_id = loops.loc["pruned" if label.endswith("pruned") else "random", "run_id"]
            assert table[label][1] == "FAILED" and table[label][-1] == loop_id
            assert "its run is FAILED" in " ".join(table[label])
    assert last == f"pipeline run {pipeline_id}"
    metrics = mlflow.get_run(pipeline_id).data.metrics
    assert (metrics["stages"], metrics["stages_failed"], metrics["stages_reused"]) == (8, 4, 0)
    assert set(loops["status"]) == {"FAILED"} and set(loops["tags.mlflow.parentRunId"]) == {pipeline_id}
    assert [shlex.split(s) for s in loops["params.sizes"]] == [["0.3 0.5"]] * 2  # MLflow shell-quotes a value with spaces
    # every other stage ran: the teacher and its evaluation, the timings, the report
    finished = runs[runs["status"] == "FINISHED"]
    assert finished["tags.dmat.role"].value_counts().to_dict() == {
        "pipeline": 1, "teacher": 1, "feature-extractor": 1, "evaluation": 1, "cost": 1, "report": 1, "floor": 4}
    [teacher] = finished[finished["tags.dmat.role"] == "teacher"]["run_id"]
    assert list(finished[finished["tags.dmat.role"] == "evaluation"]["tags.dmat.model_run_id"]) == [teacher]
    assert len(runs) == len(finished) + 2  # nothing else failed or was left running


@pytest.mark.parametrize("budget, epochs", [("fixed", 20), ("teacher", 60), ("early-stopping", 120)])
def test_student_budget_sets_the_students_epochs(budget, epochs):
    cfg = PipelineConfig(teacher_epochs=60, student_epochs=20, student_budget=budget).validate()
    assert cfg.student_training() == {"epochs": epochs, "early_stopping_patience": TrainConfig.early_stopping_patience}


def test_a_preset_resolves_to_its_documented_values_and_each_option_overrides_it():
    quick, full = PipelineConfig.from_preset("quick").validate(), PipelineConfig.from_preset("full").validate()
    assert (quick.sizes, quick.seeds, quick.inits, quick.methods, quick.steps_grid) == (
        (0.25, 0.5, 1.0), (0,), ("pruned",), ("distill",), ())
    assert (quick.teacher_epochs, quick.student_epochs, quick.base_channels, quick.num_samples) == (12, 6, 16, 400)
    assert quick == PipelineConfig().validate()  # the class defaults are the quick study
    assert full.seeds == (0, 1, 2) and set(full.inits) == {"random", "pruned"} and set(full.methods) == {
        "distill", "scratch"}
    assert full.steps_grid == (5, 10, 20, 50) and (full.lr_schedule, full.stop_when_converged) == ("cosine", True)
    # every model of the full study (teacher and students alike) trains with one recipe
    assert full.recipe() == {"lr": 1e-3, "lr_warmup_epochs": 2, "lr_schedule": "cosine", "stop_when_converged": True}
    assert (quick.lr, quick.lr_warmup_epochs) == (TrainConfig.lr, 0)
    assert set(full.ablation_sizes) < set(full.sizes) and full.main_line == ("distill", "pruned")
    for name, value in {"sizes": (0.3,), "seeds": (4, 5), "teacher_epochs": 7, "num_samples": 99,
                        "student_budget": "teacher", "steps_grid": (3,), "ablation_sizes": (),
                        "stop_when_converged": False, "lr": 5e-4, "lr_warmup_epochs": 0}.items():
        assert getattr(PipelineConfig.from_preset("full", **{name: value}), name) == value
        assert getattr(PipelineConfig.from_preset("full", **{name: None}), name) == getattr(full, name)


def test_the_cli_applies_the_preset_then_the_options_given(monkeypatch):
    seen = {}

    def run_pipeline(cfg, experiment, *_, **__):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("dmat.study.pipeline.run_pipeline", run_pipeline)
    CliRunner().invoke(cli, ["pipeline", "--preset", "full", "--seeds", "3", "--inits", "random",
                             "--teacher-epochs", "40", "--ablation-sizes", "0.5, 1", "--stop-when-converged", "false"])
    cfg = seen["cfg"]
    assert (cfg.preset, cfg.seeds, cfg.inits, cfg.teacher_epochs) == ("full", (3,), ("random",), 40)
    assert (cfg.ablation_sizes, cfg.stop_when_converged) == ((0.5, 1.0), False)
    assert cfg.sizes == PipelineConfig.from_preset("full").sizes and cfg.student_budget == "fixed"
    # as `mlflow run . -P preset=full` passes it: every other parameter "" (not given)
    CliRunner().invoke(cli, ["pipeline", "--preset", "full", "--teacher-epochs", "", "--sizes", "", "--seeds", ""])
    assert seen["cfg"] == PipelineConfig.from_preset("full")


def test_the_ablations_train_at_the_ablation_sizes_and_the_main_line_at_every_size():
    cfg = PipelineConfig.from_preset("full", inits=("random", "pruned")).validate()
    assert cfg.arm_sizes("distill", "pruned") == cfg.sizes
    assert cfg.arm_sizes("scratch", "pruned") == cfg.arm_sizes("distill", "random") == cfg.ablation_sizes
    assert PipelineConfig.from_preset("full", inits=("random",)).validate().main_line == ("distill", "random")
    assert cfg.arm_sizes("scratch", "random") == ()  # changes both: no question needs it
    assert PipelineConfig.from_preset("full", ablation_sizes=()).validate().arm_sizes("scratch", "random") == cfg.sizes
    with pytest.raises(DmatError, match="ablation-sizes must be among the sizes"):
        PipelineConfig.from_preset("full", ablation_sizes=(0.3,)).validate()


def test_an_unknown_preset_is_one_line(store):
    result = CliRunner().invoke(cli, ["pipeline", "--preset", "medium"])
    assert result.exit_code == 2 and "preset must be one of quick, full" in result.stderr


def test_workers_share_the_cores_and_the_gpus():
    from dmat.study.executor import default_workers, slots

    assert [(s.threads, s.gpu) for s in slots(2, cores=2, gpus=0)] == [(1, None), (1, None)]
    assert [(s.threads, s.gpu) for s in slots(4, cores=16, gpus=2)] == [(4, 0), (4, 1), (4, 0), (4, 1)]
    assert slots(1, cores=8, gpus=1)[0].environment() == {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8",
                                                           "DMAT_WORKER": "0"}
    assert slots(3, cores=2, gpus=0)[0].threads == 1  # never fewer than one thread
    assert default_workers(gpus=0, cores=2) == 2 and default_workers(gpus=0, cores=1) == 1
    assert default_workers(gpus=4) == 4


@pytest.mark.slow
def test_a_pipeline_stopped_by_sigterm_is_killed_as_a_whole_and_a_rerun_continues(store, project_env, tmp_path):
    import signal
    import time

    args = [sys.executable, "-m", "dmat", "pipeline", *TINY_PIPELINE, "--student-epochs", "10",
            "--reuse-any-commit", "true"]
    process = subprocess.Popen(args, env=project_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 600
    client = mlflow.MlflowClient()
    while time.time() < deadline:  # stop it while the students loop trains, each student past its first epoch
        runs = mlflow.search_runs(search_all_experiments=True)
        students = runs[(runs["tags.dmat.role"] == "student") & (runs["status"] == "RUNNING")] if not runs.empty else runs
        if len(students) == 2 and all(client.get_metric_history(run_id, "val_loss") for run_id in students.run_id):
            break
        time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM)") and "rerun the same command to continue" in last

    runs = mlflow.search_runs(search_all_experiments=True).set_index("run_id")
    [pipeline] = runs.index[runs["tags.dmat.role"] == "pipeline"]
    under = runs[runs["tags.mlflow.parentRunId"] == pipeline]
    assert runs.loc[pipeline, "status"] == "KILLED"
    [loop] = under.index[under["tags.mlflow.project.entryPoint"] == "students"]
    assert (runs.loc[loop, "status"], runs.loc[loop, "tags.dmat.role"]) == ("KILLED", "students-loop")
    assert runs.loc[loop, "tags.mlflow.runName"] == "students-distill"
    assert set(runs[runs["tags.dmat.launched_by"] == loop]["status"]) == {"KILLED"}
    assert not (runs["status"] == "RUNNING").any()

    stopped = set(runs[runs["tags.dmat.launched_by"] == loop].index)
    rerun = subprocess.run(args, env=project_env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "teacher" in [line.split()[0] for line in rerun.stdout.splitlines() if "reused" in line.split()[1:2]]
    runs = mlflow.search_runs(search_all_experiments=True).set_index("run_id")
    students = runs[runs["tags.dmat.role"] == "student"]
    assert set(students.index) == stopped and set(students["status"]) == {"FINISHED"}  # continued, not retrained
    for run_id in stopped:
        epochs = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")]
        assert len(epochs) == len(set(epochs)) == 10, f"run {run_id} logged epochs {epochs}"


@pytest.mark.slow
def test_a_quick_preset_rerun_evaluates_nothing_again(store):
    """The quick preset's steps grid is empty, which `mlflow run` stores as '': a rerun still finds every finished
    evaluation and creates no evaluation run."""
    quick = [arg for i, arg in enumerate(TINY_PIPELINE) if "--steps-grid" not in TINY_PIPELINE[i - 1:i + 1]]
    args = ["pipeline", "--preset", "quick", *quick, "--reuse-any-commit", "true"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output + str(first.exception)
    evaluations = {run.info.run_id for run in tracking.find_runs(tracking.EVALUATION, status=None)}
    assert len(evaluations) == 3  # the teacher and two students
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output + str(second.exception)
    assert {run.info.run_id for run in tracking.find_runs(tracking.EVALUATION, status=None)} == evaluations
    summary = [words for words in map(str.split, second.output.splitlines()) if words[-2:-1] == ["run"]]  # label ... run ID
    assert sum(words[1] == "reused" for words in summary) == 6, second.output


def test_a_stage_is_found_by_its_params_as_mlflow_run_stored_them(store):
    """`mlflow run` logs a -P value shell-quoted: the quick preset's empty steps grid as the two characters '' (and a
    value with a space as 'a b'). The lookup that reuses a finished stage, and what reads the value back, must see
    through that, else every rerun evaluates every model again."""
    from mlflow.projects.utils import _create_run  # how `mlflow run` creates a stage's run and logs its params

    from dmat.evaluation.pending import grid_of, settings_of
    from dmat.study.stage import encoded, find_finished

    experiment_id = mlflow.set_experiment("dmat-test").experiment_id
    wanted = encoded({"run_id": "0" * 32, "num_samples": 80, "steps": 4, "steps_grid": (), "device": "cpu",
                      "precision": "fp32", "experiment": "a study"})
    run = _create_run(str(ROOT), experiment_id, str(ROOT), None, "evaluate", wanted).info.run_id
    stored = mlflow.get_run(run).data.params
    assert (stored["steps_grid"], stored["experiment"]) == ("''", "'a study'")
    assert find_finished("evaluate", wanted, experiment_id) is None  # still RUNNING
    mlflow.MlflowClient().set_terminated(run)
    assert find_finished("evaluate", wanted, experiment_id) == run
    assert find_finished("evaluate", {**wanted, "steps_grid": "2,4"}, experiment_id) is None
    assert grid_of(stored) == set() and tracking.param_value(stored, "experiment") == "a study"
    assert settings_of(stored) == settings_of({**stored, "steps_grid": ""})


class _Stage:
    """A stage process as `mlflow run` starts one (run_id, command_proc, wait, cancel), that exits as dmat does on
    SIGTERM (128 + 15) without marking its run."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"
        self.command_proc = subprocess.Popen([sys.executable, "-c", code])

    def wait(self) -> bool:
        return self.command_proc.wait() == 0

    def cancel(self) -> None:
        self.command_proc.terminate()
        self.command_proc.wait()


def test_a_stopped_pipeline_and_its_stages_end_killed_not_failed_or_running(store):
    """A stage whose process a stop signal ended is KILLED (resumable), whether the pipeline stopped it or the signal
    reached it first (Ctrl-C to the whole group); the pipeline's own run is KILLED before the stages are waited for,
    so a stop that turns into SIGKILL does not leave it RUNNING."""
    import threading
    import time

    from dmat.study import stage

    client = mlflow.MlflowClient()
    experiment_id = mlflow.set_experiment("dmat-test").experiment_id
    pipeline_run, loop_run, hit_run = (client.create_run(experiment_id).info.run_id for _ in range(3))
    hit = _Stage(hit_run)
    time.sleep(0.5)  # its SIGTERM handler is in place
    hit.command_proc.terminate()  # the signal reached the stage first: the pipeline is not stopping yet
    assert stage._wait(hit) == "its process ended and its run is KILLED"
    errors = []
    waiting = threading.Thread(target=lambda: errors.append(stage._wait(_Stage(loop_run))))
    waiting.start()
    while loop_run not in stage._LIVE:
        time.sleep(0.1)
    time.sleep(0.5)
    try:
        stage.stop_stages(pipeline_run)
        waiting.join(timeout=30)
    finally:
        stage.STOPPING.clear()
    assert errors == ["its process ended and its run is KILLED"]
    assert {run: client.get_run(run).info.status for run in (pipeline_run, loop_run, hit_run)} == dict.fromkeys(
        (pipeline_run, loop_run, hit_run), "KILLED")
