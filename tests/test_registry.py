"""The Model Registry: a registered model per teacher (data set, resolution) and per student kind (also size factor,
method, init), whose versions are successive trainings; `models:/` URIs wherever a model's run id is taken;
evaluations move the `best` alias, comparing like scores only (and an older store's `best-*` aliases)."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner
from conftest import tiny_train
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.cli.main import cli
from dmat.errors import DmatError
from dmat.stages.distill import resolve_teacher
from dmat.tracking import registry

TEACHERS = "dmat-digits-8px-teacher"


def test_registered_names_say_data_set_resolution_and_role():
    assert registry.registered_name("digits", 16, "teacher") == "dmat-digits-16px-teacher"
    assert registry.registered_name("folder:/data/my faces", 32, "student") == "dmat-folder-data-my-faces-32px-student"
    student = {tracking.ROLE: "student", tracking.DATASET: "digits", tracking.IMAGE_SIZE: "16",
               tracking.SIZE_FACTOR: "0.4", tracking.METHOD: "distill", tracking.INIT: "pruned"}
    assert registry.name_of(student) == "dmat-digits-16px-student-0.4-distill-pruned"
    assert registry.name_of({**student, tracking.ROLE: "teacher"}) == "dmat-digits-16px-teacher"


def test_models_uris_resolve_to_the_run_behind_them(study, teacher_run_id):
    [version] = MlflowClient().search_model_versions(f"run_id = '{teacher_run_id}'")
    assert registry.run_id_of(f"models:/{TEACHERS}/{version.version}") == teacher_run_id
    assert registry.run_id_of(version.source) == teacher_run_id  # models:/MODEL_ID, an MLflow 3 logged model
    newest = tracking.find_runs("teacher", {tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8"}, max_results=1)
    assert registry.run_id_of(f"models:/{TEACHERS}@latest") == newest[0].info.run_id  # the newest to finish
    # what --teacher-run-id goes through: the teacher is checked and its run id used from then on
    assert resolve_teacher(tiny_train(), f"models:/{TEACHERS}/{version.version}") == teacher_run_id
    assert registry.run_id_of(teacher_run_id) == teacher_run_id and registry.run_id_of(None) is None


@pytest.mark.parametrize("command,uri,message", [
    (["distill", "--size-factor", "0.5", "--image-size", "8", "--teacher-run-id"], f"models:/{TEACHERS}@nope",
     f"models:/{TEACHERS}@nope: registered model {TEACHERS} has no alias @nope"),
    (["evaluate", "--run-id"], f"models:/{TEACHERS}/999", f"registered model {TEACHERS} has no version 999"),
    (["evaluate", "--run-id"], "models:/no-such-model@best", "no registered model (or logged model id) 'no-such-model'"),
])
def test_a_reference_that_leads_nowhere_is_one_line_and_writes_nothing(study, command, uri, message):
    before = len(mlflow.search_runs(search_all_experiments=True))
    result = CliRunner().invoke(cli, [*command, uri, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


def _student(client, size: str, method: str) -> str:
    """A registered student version (no training: the registry only reads tags)."""
    run = client.create_run(client.get_experiment_by_name("dmat-test").experiment_id,
                            tags={tracking.ROLE: "student", tracking.SIZE_FACTOR: size, tracking.METHOD: method})
    client.set_terminated(run.info.run_id)
    name = registry.registered_name("digits", 8, "student")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    tags = {k: v for k, v in run.data.tags.items() if k in registry.LINEAGE_TAGS}
    client.create_model_version(name, f"{run.info.artifact_uri}/sampler", run.info.run_id, tags=tags)
    return run.info.run_id


def _evaluation(client, fid: float, num_samples: int) -> str:
    run = client.create_run(client.get_experiment_by_name("dmat-test").experiment_id)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param("num_samples", str(num_samples))],
                     metrics=[mlflow.entities.Metric("fid", fid, 0, 0), mlflow.entities.Metric("kid", fid / 10, 0, 0)])
    return run.info.run_id


def test_evaluations_move_best_aliases_to_the_lowest_fid_of_like_evaluations(store):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    name = registry.registered_name("digits", 8, "student")
    a, b, c = _student(client, "0.4", "distill"), _student(client, "0.4", "scratch"), _student(client, "0.4", "distill")
    version_of = {v.run_id: v.version for v in client.search_model_versions(f"name = '{name}'")}

    def evaluate(run_id, fid, num_samples):
        moved = registry.record_evaluation(run_id, _evaluation(client, fid, num_samples), ("num_samples",))
        return moved, {alias: [k for k, v in version_of.items() if v == version][0]
                       for alias, version in client.get_registered_model(name).aliases.items()}

    assert evaluate(a, 30.0, 500) == (["best-0_4", "best-0_4-distill"], {"best-0_4": a, "best-0_4-distill": a})
    assert evaluate(b, 20.0, 500)[1] == {"best-0_4": b, "best-0_4-distill": a, "best-0_4-scratch": b}
    # scores measured another way are not compared with these: the newest settings decide, among like scores
    assert evaluate(c, 10.0, 100)[1] == {"best-0_4": c, "best-0_4-distill": c, "best-0_4-scratch": b}
    assert evaluate(a, 25.0, 100)[1] == {"best-0_4": c, "best-0_4-distill": c, "best-0_4-scratch": b}  # a is worse
    tags = client.get_model_version(name, version_of[a]).tags
    assert (tags["fid"], tags["kid"], tags[tracking.EVAL_SETTINGS]) == ("25", "2.5", "num_samples=100")
    assert registry.run_id_of(f"models:/{name}@best-0_4-distill") == c


def test_an_unregistered_model_is_left_alone(store):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("dmat-test").experiment_id)
    assert registry.record_evaluation(run.info.run_id, _evaluation(client, 5.0, 10), ("num_samples",)) == []
    with pytest.raises(DmatError, match="no registered model"):
        registry.run_id_of("models:/dmat-digits-8px-student@best-0_4")


def _version_of_its_kind(client, size: str, method: str, seed: int) -> tuple[str, str]:
    """A student registered as publish() registers it: under its kind's name (no training: the registry reads tags)."""
    tags = {tracking.ROLE: "student", tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8", tracking.SIZE_FACTOR: size,
            tracking.METHOD: method, tracking.INIT: "random"}
    run = client.create_run(client.get_experiment_by_name("dmat-test").experiment_id, tags={**tags, "seed": str(seed)})
    client.set_terminated(run.info.run_id)
    name = registry.name_of(tags)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    client.create_model_version(name, f"{run.info.artifact_uri}/sampler", run.info.run_id, tags=tags)
    return name, run.info.run_id


def test_a_students_versions_are_its_trainings_and_best_is_the_lowest_fid_of_them(store):
    mlflow.set_experiment("dmat-test")
    client = MlflowClient()
    (name, a), (_, b), (other, c) = (_version_of_its_kind(client, "0.4", "distill", 0),
                                     _version_of_its_kind(client, "0.4", "distill", 1),
                                     _version_of_its_kind(client, "0.6", "distill", 0))
    assert name == "dmat-digits-8px-student-0.4-distill-random" and other == "dmat-digits-8px-student-0.6-distill-random"
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")) == [1, 2]
    assert registry.record_evaluation(a, _evaluation(client, 30.0, 500), ("num_samples",)) == ["best"]
    registry.record_evaluation(b, _evaluation(client, 20.0, 500), ("num_samples",))
    registry.record_evaluation(c, _evaluation(client, 10.0, 500), ("num_samples",))  # another model: not a rival
    assert registry.run_id_of(f"models:/{name}@best") == b and registry.run_id_of(f"models:/{other}@best") == c
    assert registry.run_id_of(f"models:/{name}@latest") == b  # the newest training
