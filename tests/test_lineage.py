"""What a run saw and what ran it: dataset inputs with digests of the actual tensors, system metrics, run
descriptions and names, the experiment's kind, and pipeline reuse that requires the same git commit."""

from __future__ import annotations

import subprocess
import time
from types import SimpleNamespace

import mlflow
from click.testing import CliRunner
from conftest import tiny_train
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.cli.main import cli
from dmat.data import load_splits
from dmat.study import pipeline
from dmat.tracking import lineage


def _inputs(run_id: str) -> dict[str, tuple[str, str, dict]]:
    """{dataset name: (digest, context, profile)} of a run's dataset inputs."""
    import json

    out = {}
    for given in mlflow.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in given.tags}
        out[given.dataset.name] = (given.dataset.digest, tags["mlflow.data.context"], json.loads(given.dataset.profile))
    return out


def test_a_training_run_logs_its_splits_with_digests_of_the_tensors(study, teacher_run_id):
    inputs = _inputs(teacher_run_id)
    assert set(inputs) == {"digits-8px-train", "digits-8px-validation"}
    splits = load_splits(tiny_train())
    digest, context, profile = inputs["digits-8px-train"]
    assert context == "training" and digest == lineage.digest(splits.train[i][None] for i in range(len(splits.train)))
    assert profile == {"split": "train", "num_images": len(splits.train), "image_shape": [1, 8, 8],
                       "val_fraction": 0.1, "split_seed": 0}
    assert inputs["digits-8px-validation"][1] == "validation"
    source = mlflow.get_run(teacher_run_id).inputs.dataset_inputs[0].dataset.source
    assert source.endswith('digits.csv.gz"}')


def test_other_data_has_another_digest_under_the_same_name():
    def train_digest(**overrides):
        splits = load_splits(tiny_train(**overrides))
        return lineage.image_set("digits", 8, "train", splits.train)

    same, other_split, other_size = train_digest(), train_digest(split_seed=1), train_digest(image_size=16)
    assert same.digest == train_digest().digest and len(same.digest) == lineage.DIGEST_CHARS
    assert other_split.digest != same.digest and other_size.digest != same.digest


def test_system_metrics_for_training_and_evaluation_runs_unless_turned_off(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    for role, switch, logged in [("teacher", None, True), ("evaluation", None, True), ("teacher", "false", False),
                                 ("report", None, False)]:  # one store: a new one takes seconds to create
        if switch is None:
            monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", switch)
        with tracking.tracked_run("x", {tracking.ROLE: role}) as run:
            time.sleep(1.0)
        metrics = mlflow.get_run(run.info.run_id).data.metrics
        assert ("system/cpu_utilization_percentage" in metrics) == logged, (role, switch)
        assert ("system/system_memory_usage_megabytes" in metrics) == logged, (role, switch)


def test_the_system_metrics_option_sets_mlflows_own_switch(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")  # restored after the test
    result = CliRunner().invoke(cli, ["teacher", "--system-metrics", "false", "--epochs", "0"])
    assert result.exit_code == 2  # bad epochs: nothing trains, but the switch was read
    assert tracking.system_metrics_for("teacher") is False
    CliRunner().invoke(cli, ["teacher", "--system-metrics", "--epochs", "0"])
    assert tracking.system_metrics_for("teacher") is True and tracking.system_metrics_for("report") is None


def test_runs_are_described_named_and_in_a_model_training_experiment(study, teacher_run_id):
    run = mlflow.get_run(teacher_run_id)
    note = run.data.tags[tracking.NOTE]
    assert note.startswith("**Teacher**") and "Reproduce: `dmat teacher --image-size 8 --batch-size 128 --epochs 2" in note
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    assert tracking.readable_name("lyrical-pig-613", "student-0.4") == "student-0.4"  # MLflow's random name
    assert tracking.readable_name("my-own-name", "student-0.4") == "my-own-name"  # a name a person chose
    assert tracking.readable_name(None, "student-0.4") == "student-0.4"


def _git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def test_the_source_is_a_commit_of_a_clean_checkout(tmp_path):
    assert lineage.Source.of(tmp_path).commit is None  # not a checkout: params alone decide, as before
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = lineage.Source.of(tmp_path)
    assert len(clean.commit) == 40 and not clean.dirty
    assert clean.reuse_tags == {tracking.GIT_COMMIT: clean.commit, tracking.SOURCE_DIRTY: "false"}
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = lineage.Source.of(tmp_path)
    assert dirty.dirty and dirty.reuse_tags is None and dirty.run_tags == {tracking.SOURCE_DIRTY: "true"}
    assert lineage.Source.of(tmp_path, any_commit=True).reuse_tags == {}


def test_a_stage_logged_at_another_commit_is_not_reused(store, monkeypatch):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("dmat-test").experiment_id
    old = client.create_run(experiment_id, tags={tracking.ENTRY_POINT: "teacher", tracking.GIT_COMMIT: "a" * 40,
                                                 tracking.SOURCE_DIRTY: "false"})
    client.log_param(old.info.run_id, "epochs", "2")
    client.set_terminated(old.info.run_id)
    launched = []

    def launch(*args, **kwargs):  # the stage's entry point, without training anything
        run = client.create_run(experiment_id, tags={tracking.ENTRY_POINT: "teacher"})
        client.set_terminated(run.info.run_id)
        launched.append(run.info.run_id)
        return SimpleNamespace(run_id=run.info.run_id, wait=lambda: True)

    monkeypatch.setattr(pipeline.mlflow.projects, "run", launch)

    def stage(source):
        return pipeline.run_stage(pipeline.Stage("teacher", "teacher"), {"epochs": 2}, experiment_id, "parent",
                                  source=source)

    assert stage(lineage.Source("a" * 40)).run_id == old.info.run_id  # same commit, clean: reused
    elsewhere = stage(lineage.Source("b" * 40))
    assert not elsewhere.reused and elsewhere.run_id == launched[-1]
    assert mlflow.get_run(elsewhere.run_id).data.tags[tracking.SOURCE_DIRTY] == "false"
    assert not stage(lineage.Source("a" * 40, dirty=True)).reused  # uncommitted changes are no commit
    assert stage(lineage.Source("b" * 40, any_commit=True)).reused  # --reuse-any-commit: params alone
    assert len(launched) == 2
