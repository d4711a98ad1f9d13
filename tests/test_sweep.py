"""Optuna sweeps: workers sharing one sqlite study, trials as nested MLflow runs, pruned trials, the
Pareto front of a multi-objective study, bad input."""

import os
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from dmat import tracking
from dmat.cli.main import cli
from dmat.config import SweepConfig
from dmat.report import build_report
from dmat.report.query import load_study
from dmat.study.sweep import create_study, run_sweep

TINY_SWEEP = ["--image-size", "8", "--max-epochs", "1", "--num-samples", "80", "--device", "cpu"]


def tiny_sweep(tmp_path, teacher_run_id, name, **overrides) -> SweepConfig:
    return SweepConfig(**{**dict(storage=f"sqlite:///{tmp_path}/optuna.db", study_name=name, n_trials=2,
                                 teacher_run_id=teacher_run_id, image_size=8, max_epochs=1, num_samples=80,
                                 device="cpu"), **overrides})


def enqueue(cfg: SweepConfig, *trials: dict) -> None:
    """Fix each trial's settings up front (tiny, cheap, the same on every run); Optuna suggests them."""
    study = create_study(cfg)
    for settings in trials:
        study.enqueue_trial({"size_factor": 0.5, "lr": 1e-3, "epochs": 1, "kd_weight": 1.0, "task_weight": 1.0,
                             "feature_weight": 0.0, "student_steps": 10, **settings})


def sweep_runs(name: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The study's parent run and its student runs."""
    parents = tracking.find_runs(tracking.SWEEP, {tracking.STUDY_NAME: name}, status=None)
    assert len(parents) == 1
    return parents[0], tracking.find_runs(tracking.STUDENT, {tracking.STUDY_NAME: name}, status=None)


def evaluations_of(student_run_id: str) -> list[mlflow.entities.Run]:
    return tracking.find_runs(tracking.EVALUATION, {tracking.MODEL_RUN_ID: student_run_id}, status=None)


def sweep_artifact(parent_run_id: str, name: str, tmp_path) -> pd.DataFrame:
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_run_id, artifact_path=f"sweep/{name}",
                                                           dst_path=str(tmp_path / "artifacts")))


class PruneTrials(optuna.pruners.BasePruner):
    """An Optuna pruner that prunes the given trial numbers at their first report: which trial is pruned
    is fixed, while reporting, pruning and logging run through Optuna and the sweep as in any study."""

    def __init__(self, numbers):
        self.numbers = set(numbers)

    def prune(self, study, trial) -> bool:
        return trial.number in self.numbers


@pytest.mark.slow
def test_two_workers_finish_every_trial_of_one_study(study, teacher_run_id, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = CliRunner().invoke(cli, ["sweep", "--storage", storage, "--study-name", "two", "--n-trials", "4",
                                      "--workers", "2", "--teacher-run-id", teacher_run_id, *TINY_SWEEP])
    assert result.exit_code == 0, result.output + str(result.exception)
    trials = optuna.load_study(study_name="two", storage=storage).trials
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}, [t.state.name for t in trials]

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dmat.study_name` = 'two'")
    parent = runs[runs["tags.dmat.role"] == "sweep"]
    assert len(parent) == 1 and parent.iloc[0]["status"] == "FINISHED"
    students = runs[runs["tags.dmat.role"] == "student"]
    assert sorted(students["tags.dmat.trial"].astype(int)) == [0, 1, 2, 3]
    assert set(students["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    for trial in trials:
        if trial.state.name == "COMPLETE":
            run = mlflow.get_run(trial.user_attrs["student_run_id"])
            assert float(run.data.params["size_factor"]) == pytest.approx(trial.params["size_factor"])
            evaluation = mlflow.get_run(trial.user_attrs["evaluation_run_id"])
            assert evaluation.data.metrics["fid"] == pytest.approx(trial.value)

    # the report draws each study apart from the size comparison
    study_tables = load_study()
    assert not study_tables.evaluations.model_run_id.isin(students.run_id).any()
    assert sorted(study_tables.sweep_trials.query("study_name == 'two'").trial) == [0, 1, 2, 3]
    report = build_report(sections=("summary", "sweep"), out_dir=tmp_path / "report", log_run=False)
    assert (report.parent / "figures" / "sweep_two.png").exists()


def test_the_pruner_compares_a_loss_that_the_trials_weights_do_not_scale():
    """Same student, same batch, same noise: the weighted total moves with the weights, the pruner's loss does not."""
    import torch
    from conftest import tiny_diffusion, tiny_unet

    from dmat.config import DistillConfig
    from dmat.model.diffusion import GaussianDiffusion
    from dmat.model.unet import UNet
    from dmat.study.sweep import pruning_loss
    from dmat.training.distillation import DistillLoss

    torch.manual_seed(0)
    teacher, student = UNet(tiny_unet()), UNet(tiny_unet(size_factor=0.5))
    diffusion, x0 = GaussianDiffusion(tiny_diffusion()), torch.rand(16, 1, 8, 8) * 2 - 1
    seen = []
    for weights in (dict(kd_weight=0.1, task_weight=0.0), dict(kd_weight=2.0, task_weight=2.0, feature_weight=1.0)):
        objective = DistillLoss(diffusion, DistillConfig(**weights), teacher, student.feature_channels)
        total, parts = objective.loss(student, x0, torch.Generator().manual_seed(1))
        seen.append((total.item(), pruning_loss({"val_loss": total.item(), "val_task_loss": parts["task_loss"]})))
    (total_a, pruned_a), (total_b, pruned_b) = seen
    assert total_b > 5 * total_a and pruned_a == pruned_b


def test_zero_trials_is_refused(store):
    result = CliRunner().invoke(cli, ["sweep", "--n-trials", "0"])
    assert result.exit_code == 2 and "n-trials must be at least 1" in result.stderr


def test_unreachable_storage_is_one_line_without_the_password(store):
    result = CliRunner().invoke(cli, ["sweep", "--storage", "postgresql://me:hunter2@127.0.0.1:9/optuna"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "cannot be opened" in errors[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_existing_study_with_other_objectives_is_refused(store, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(storage=storage, study_name="s", direction="minimize")
    result = CliRunner().invoke(cli, ["sweep", "--storage", storage, "--study-name", "s", "--multi-objective"])
    assert result.exit_code == 2 and "already exists as a FID-only study" in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


@pytest.mark.slow
def test_a_pruned_trial_stops_training_is_tagged_and_never_evaluated(study, teacher_run_id, tmp_path):
    cfg = tiny_sweep(tmp_path, teacher_run_id, "pruned", max_epochs=2)
    enqueue(cfg, {"epochs": 1}, {"epochs": 2, "size_factor": 0.25})
    result = run_sweep(cfg, pruner=PruneTrials({1}))

    done, pruned = result.trials
    assert (done.state, pruned.state) == (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert list(pruned.intermediate_values) == [1]  # reported epoch 1, pruned there
    parent, students = sweep_runs("pruned")
    by_trial = {int(run.data.tags[tracking.TRIAL]): run for run in students}
    assert sorted(by_trial) == [0, 1]
    assert pruned.user_attrs["student_run_id"] == by_trial[1].info.run_id
    assert "evaluation_run_id" not in pruned.user_attrs

    # the pruned student stopped after epoch 1 of its 2, says so, and was never evaluated
    student = by_trial[1]
    assert student.data.tags[tracking.STOPPED_BY_PRUNER] == "epoch 1"
    assert student.data.params["epochs"] == "2" and student.data.metrics["epochs_run"] == 1
    assert student.data.metrics["val_task_loss"] == pytest.approx(pruned.intermediate_values[1])  # not val_loss
    assert student.data.tags[tracking.PARENT_RUN_ID] == parent.info.run_id
    assert evaluations_of(student.info.run_id) == []
    # the complete trial was evaluated and is the study's best
    assert tracking.STOPPED_BY_PRUNER not in by_trial[0].data.tags
    [evaluation] = evaluations_of(by_trial[0].info.run_id)
    assert evaluation.info.run_id == done.user_attrs["evaluation_run_id"]
    assert evaluation.data.metrics["fid"] == pytest.approx(done.value)

    parent = mlflow.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["trials_complete"] == 1
    assert parent.data.metrics["best_fid"] == pytest.approx(done.value)
    assert parent.data.tags[tracking.BEST_STUDENT_RUN_ID] == by_trial[0].info.run_id
    trials = sweep_artifact(parent.info.run_id, "trials.csv", tmp_path).set_index("number")
    assert trials.loc[[0, 1], "state"].tolist() == ["COMPLETE", "PRUNED"]
    assert trials.loc[1, "user_attrs_student_run_id"] == student.info.run_id
    assert trials.loc[0, "user_attrs_evaluation_run_id"] == evaluation.info.run_id
    assert pd.isna(trials.loc[1, "user_attrs_evaluation_run_id"])


@pytest.mark.slow
def test_multi_objective_pareto_front_is_optunas_best_trials(study, teacher_run_id, tmp_path):
    cfg = tiny_sweep(tmp_path, teacher_run_id, "pareto", multi_objective=True)
    enqueue(cfg, {"size_factor": 0.25}, {"size_factor": 0.5})
    result = run_sweep(cfg)

    assert [t.state.name for t in result.trials] == ["COMPLETE", "COMPLETE"]
    parent, students = sweep_runs("pareto")
    assert sorted(int(run.data.tags[tracking.TRIAL]) for run in students) == [0, 1]
    assert not [run for run in students if tracking.STOPPED_BY_PRUNER in run.data.tags]  # multi-objective studies never prune
    # each trial's (FID, parameters) are its evaluation run's metrics
    measured = {}
    for trial in result.trials:
        [evaluation] = evaluations_of(trial.user_attrs["student_run_id"])
        assert evaluation.info.run_id == trial.user_attrs["evaluation_run_id"]
        measured[trial.number] = (evaluation.data.metrics["fid"], evaluation.data.metrics["num_parameters"])
        assert trial.values == pytest.approx(list(measured[trial.number]))
    assert measured[0][1] < measured[1][1]  # a smaller size factor, fewer parameters

    front = sweep_artifact(parent.info.run_id, "pareto_front.csv", tmp_path)
    best = optuna.load_study(study_name="pareto", storage=cfg.storage).best_trials
    assert front.trial.tolist() == [t.number for t in best]
    assert front.student_run_id.tolist() == [t.user_attrs["student_run_id"] for t in best]
    for row in front.itertuples():
        assert (row.fid, row.num_parameters) == pytest.approx(measured[row.trial])

    # and it is the Pareto front of the measured metrics: no trial is dominated, none left out
    def dominated(a, b):  # b dominates a
        return all(y <= x for x, y in zip(a, b)) and a != b
    assert set(front.trial) == {n for n, m in measured.items() if not any(dominated(m, o) for o in measured.values())}
    parent = mlflow.get_run(parent.info.run_id)
    assert parent.data.metrics["trials_complete"] == 2 and "best_fid" not in parent.data.metrics


def test_a_pruner_object_needs_one_worker(store, tmp_path):
    with pytest.raises(ValueError, match="workers=1"):
        run_sweep(tiny_sweep(tmp_path, "", "x", workers=2), pruner=PruneTrials({0}))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_rerun_of_a_seeded_sweep_proposes_new_settings(tmp_path, monkeypatch):
    """Each `work` call is what one `dmat sweep` process does: the second joins the study the first left."""
    from dmat.study import sweep

    def proposals_only(cfg, parent_run_id, experiment):
        return lambda trial: trial.suggest_float("lr", 1e-5, 1e-2, log=True)

    monkeypatch.setattr(sweep, "objective", proposals_only)
    cfg = SweepConfig(study_name="rerun", seed=3, storage=f"sqlite:///{tmp_path}/optuna.db")
    create_study(cfg)
    for _ in range(2):
        sweep.work(cfg, 3, parent_run_id="unused", experiment=None)
    proposed = [trial.params["lr"] for trial in optuna.load_study(study_name="rerun", storage=cfg.storage).trials]
    assert len(proposed) == 6 and len(set(proposed)) == 6


@pytest.mark.slow
def test_a_sweep_on_a_local_ray_instance_runs_its_workers_as_ray_tasks(study, teacher_run_id, tmp_path, project_env):
    import shutil
    import subprocess
    import tempfile

    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dmat[ray]' (make test installs it)")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    try:
        done = subprocess.run([sys.executable, "-m", "dmat", "sweep", "--storage", storage, "--study-name", "ray",
                               "--n-trials", "2", "--workers", "2", "--executor", "ray", "--teacher-run-id",
                               teacher_run_id, *TINY_SWEEP], env={**project_env, "RAY_TMPDIR": ray_tmp},
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    trials = optuna.load_study(study_name="ray", storage=storage).trials
    assert len(trials) == 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dmat.study_name` = 'ray'")
    students = runs[runs["tags.dmat.role"] == "student"]
    assert sorted(students["tags.dmat.trial"].astype(int)) == [0, 1]
    assert set(students["tags.dmat.worker"].dropna()) and all(len(w) == 8 for w in students["tags.dmat.worker"])  # Ray nodes


def test_a_trial_left_running_by_a_dead_worker_is_failed_and_its_settings_run_again(tmp_path, monkeypatch):
    """kill -9 of a worker leaves its trial RUNNING in Optuna's storage; its heartbeat stops, and the next worker's
    `optimize` fails it (Optuna's fail_stale_trials, which every optimize runs first) and queues its settings again."""
    from dmat.study import sweep

    monkeypatch.setattr(sweep, "TRIAL_GRACE_SECONDS", 1)
    store = sweep.storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="killed", storage=store)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    store.record_heartbeat(trial._trial_id)  # what the dead worker's heartbeat thread last wrote
    time.sleep(2)
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params == trial.params


def test_a_live_sweep_is_not_stale_however_long_it_runs_and_a_dead_one_is(store):
    """The sweep's parent run outlives any one process; the process that holds it tags it and beats for it."""
    from mlflow.tracking import MlflowClient

    from dmat.tracking.liveness import why_stale

    long_ago = int((time.time() - 3600) * 1000)
    parent = MlflowClient().create_run(mlflow.set_experiment("dmat-test").experiment_id, start_time=long_ago).info.run_id
    assert "no heartbeat for 60 minute(s)" in why_stale(tracking.get_run(parent))
    with tracking.kept_alive(parent):
        assert why_stale(tracking.get_run(parent)) is None
    MlflowClient().set_tag(parent, tracking.OWNER_PID, "999999999")  # as if its process had died
    assert "is gone" in why_stale(tracking.get_run(parent))


def test_runs_stale_mark_killed_fails_a_dead_sweeps_running_trial(store, tmp_path, monkeypatch):
    """A sweep killed mid-trial (kill -9) leaves the trial's run and its Optuna trial RUNNING: `dmat runs --stale
    --mark-killed` marks the run KILLED and fails the trial; a storage it cannot read is one line, nothing marked."""
    import socket
    import subprocess

    from mlflow.tracking import MlflowClient

    cfg = SweepConfig(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="killed")
    trial = create_study(cfg).ask()  # RUNNING, as its dead process left it
    client, experiment_id = MlflowClient(), mlflow.set_experiment("dmat-test").experiment_id
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = {tracking.OWNER_HOST: socket.gethostname(), tracking.OWNER_PID: str(dead.pid), tracking.OWNER_STARTED: "1"}
    parent = client.create_run(experiment_id, tags={tracking.ROLE: tracking.SWEEP, tracking.STUDY_NAME: "killed",
                                                    tracking.RUN_NAME: "sweep-killed", **owner}).info.run_id
    client.log_param(parent, "storage", "sqlite:///elsewhere/optuna.db")  # the relative path of another folder
    student = client.create_run(experiment_id, tags={
        tracking.ROLE: tracking.STUDENT, tracking.STUDY_NAME: "killed", tracking.TRIAL: str(trial.number),
        tracking.PARENT_RUN_ID: parent, tracking.RUN_NAME: "student", **owner}).info.run_id

    refused = CliRunner().invoke(cli, ["runs", "--stale", "--mark-killed"])
    assert refused.exit_code == 2 and f"trial {trial.number} of sweep 'killed' is RUNNING" in refused.stderr
    assert "DMAT_OPTUNA_STORAGE" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert {client.get_run(r).info.status for r in (parent, student)} == {"RUNNING"}  # nothing marked

    monkeypatch.setenv("DMAT_OPTUNA_STORAGE", cfg.storage)
    marked = CliRunner().invoke(cli, ["runs", "--stale", "--mark-killed"])
    assert marked.exit_code == 0, marked.output
    assert {client.get_run(r).info.status for r in (parent, student)} == {"KILLED"}
    [state] = [t.state for t in optuna.load_study(study_name="killed", storage=cfg.storage).trials]
    assert state == optuna.trial.TrialState.FAIL
