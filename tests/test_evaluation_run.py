"""`evaluate_run`, `evaluate_all` and `dmat evaluate` end to end on a tiny teacher and student.

The module has a store of its own (a tiny teacher, a student-like run tagged with its teacher, and
one feature extractor), so its evaluation runs never show up in other modules' shared study.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import _end_active_runs, _point_at, tiny_diffusion, tiny_train, tiny_unet

from dmat import tracking
from dmat.cli.main import cli
from dmat.errors import DmatError
from dmat.evaluation import features
from dmat.evaluation.evaluate import evaluate_all, evaluate_run
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet

FAST = dict(num_samples=80, steps="4", batch_size=40, num_trajectories=3, eps_timesteps=5, device="cpu")
FAST_CLI = ["--num-samples", "80", "--steps", "4", "--batch-size", "40", "--num-trajectories", "3",
            "--eps-timesteps", "5", "--device", "cpu"]
MATCHED = tuple(f"{m}{part}" for m in ("fid", "kid") for part in ("", "_sd", "_floor", "_floor_sd"))
SINGLE = (*MATCHED, *(f"{m}_train" for m in MATCHED), "quality_n", "quality_draws", "precision", "recall",
          "copy_rate_pixel", "copy_rate_feature", "nn_distance_pixel", "nn_distance_pixel_heldout",
          "nn_distance_feature", "nn_distance_feature_heldout", "num_parameters", "flops_per_forward", "checkpoint_mb",
          "latency_ms_per_image", "throughput_images_per_s", "peak_memory_mb", "path_length", "eps_mse_true")
VS_TEACHER = ("final_mse", "traj_mse_mean", "traj_cosine_mean", "teacher_path_length", "eps_mse_teacher")


def _student_like_run(teacher_id: str | None) -> str:
    """A half-width student of the teacher (random weights): what distill.py logs, minus the training.
    Without a teacher id, a teacher-like run of the same kind."""
    unet = tiny_unet(image_size=8, in_channels=1, size_factor=0.5)
    tags = {tracking.ROLE: "student", tracking.TEACHER_RUN_ID: teacher_id, tracking.METHOD: "scratch",
            tracking.SIZE_FACTOR: "0.5", tracking.DATASET: "digits", tracking.IMAGE_SIZE: "8"}
    if teacher_id is None:
        tags = {**{k: v for k, v in tags.items() if k != tracking.TEACHER_RUN_ID}, tracking.ROLE: "teacher",
                tracking.METHOD: "teacher"}
    with tracking.tracked_run("student-like", tags) as run:
        mlflow.log_params({"student_steps": 3, "size_factor": 0.5})
        torch.manual_seed(1)
        model = UNet(unet)
        diffusion = GaussianDiffusion(tiny_diffusion())
        tracking.save_checkpoint(checkpoint.model_checkpoint(model, diffusion, model.state_dict()), checkpoint.BEST)
        return run.info.run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from dmat.stages.teacher import train_teacher

    with pytest.MonkeyPatch.context() as mp:
        _point_at(tmp_path_factory.mktemp("evaluation"), mp)
        teacher = train_teacher(tiny_train(), tiny_unet(), tiny_diffusion())
        student = _student_like_run(teacher)
        extractor = features.train_feature_extractor("digits", 8, epochs=2)
        yield {"teacher": teacher, "student": student, "extractor": extractor, "store": mlflow.get_tracking_uri()}
        _end_active_runs()


@pytest.fixture
def in_store(runs, monkeypatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["store"])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "dmat-test")
    mlflow.set_tracking_uri(runs["store"])
    yield runs
    _end_active_runs()


def _history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def _npz(run_id: str, path: str, into) -> np.lib.npyio.NpzFile:
    """An artifact downloaded into `into` (MLflow would leave a temp folder of its own behind)."""
    return np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(into)))


def test_student_evaluation_logs_the_contract(in_store, tmp_path):
    run_id = evaluate_run(in_store["student"], **FAST)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["dmat.role"] == "evaluation" and tags["dmat.model_role"] == "student"
    assert tags["dmat.model_run_id"] == in_store["student"]
    assert tags["dmat.teacher_run_id"] == in_store["teacher"]
    assert tags["dmat.feature_extractor_run_id"] == in_store["extractor"]
    assert (tags["dmat.size_factor"], tags["dmat.method"], tags["dmat.dataset"], tags["dmat.image_size"]) == (
        "0.5", "scratch", "digits", "8")
    assert {k: params[k] for k in ("sampler", "steps", "num_samples", "features", "seed")} == {
        "sampler": "ddim", "steps": "4", "num_samples": "80", "features": "classifier", "seed": "0"}
    assert set(SINGLE + VS_TEACHER) <= set(metrics)
    # digits' fixed held-out 400 (never trained on by a model or the extractor) is the reference, N = 80 a side
    assert params["reference"] == "heldout" and params["real_data"] == "held-out split (400 images)"
    assert (metrics["quality_n"], metrics["quality_draws"], params["floor_draws"]) == (80, 10, "10")
    assert all(metrics[m] == metrics[f"{m}_heldout"] for m in MATCHED)
    # two feature spaces, each under its name; the headline (plain names) is the random CNN's
    assert params["headline_space"] == "randcnn"
    assert all(metrics[m] == metrics[m.replace(m[:3], m[:3] + "_randcnn", 1)] for m in MATCHED)
    assert {f"{m[:3]}_classifier{m[3:]}{ref}" for m in MATCHED for ref in ("", "_train", "_heldout")} <= set(metrics)
    assert metrics["kid_classifier"] != metrics["kid"]
    assert metrics["fid"] > metrics["fid_floor"] + 2 * metrics["fid_floor_sd"] > 0  # random weights: far off
    assert metrics["kid"] > metrics["kid_floor"] + 2 * metrics["kid_floor_sd"]
    assert 0 <= metrics["copy_rate_pixel"] <= 1 and metrics["nn_distance_pixel"] > 0
    # which classes its samples are, by the classifier, against the held-out mix (random weights: not the real mix)
    assert 0 <= metrics["class_tv_floor"] < metrics["class_tv"] <= 1 and metrics["class_tv_floor_sd"] > 0
    missing = [int(c) for c in tags[tracking.MISSING_CLASSES].split(",") if c]
    assert metrics["classes_missing"] == len(missing) and all(0 <= c < 10 for c in missing)
    shares = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/coverage/class_shares.json")
    assert len(shares["generated"]) == len(shares["real"]) == 10 and abs(sum(shares["real"]) - 1) < 1e-9
    assert metrics["final_mse"] > 0 and metrics["num_parameters"] < 44969
    # its headline scores are on the model's own run too, beside its size: one row per model in the MLflow UI
    model = mlflow.get_run(in_store["student"]).data
    assert model.tags[tracking.EVALUATION_RUN_ID] == run_id
    assert {k: model.metrics[f"eval_{k}"] for k in ("kid", "fid", "kid_classifier", "latency_ms_per_image")} == {
        k: metrics[k] for k in ("kid", "fid", "kid_classifier", "latency_ms_per_image")}

    traj_mse = _history(run_id, "traj_mse")
    assert sorted(traj_mse) == [0, 1, 2, 3, 4] and traj_mse[0] == 0.0 and traj_mse[4] == metrics["final_mse"]
    assert sorted(_history(run_id, "traj_cosine")) == [0, 1, 2, 3, 4]
    assert len(_history(run_id, "eps_mse_teacher")) == 5 and max(_history(run_id, "eps_mse_true")) == 19

    traj = _npz(run_id, "trajectories/trajectories.npz", tmp_path)
    assert traj["model"].shape == traj["teacher"].shape == (3, 5, 1, 8, 8)
    assert list(traj["timesteps"])[-1] == -1 and len(traj["timesteps"]) == 5
    np.testing.assert_array_equal(traj["model"][:, 0], traj["teacher"][:, 0])  # the same starting noise
    states = _npz(run_id, "denoising/states.npz", tmp_path)
    assert states["states"].shape[:2] == (3, 5) and len(states["timesteps"]) == 5
    assert "denoising/grid.png" in [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "denoising")]
    copied = _npz(run_id, "memorisation/most_copied.npz", tmp_path)
    assert copied["samples"].shape == copied["neighbours"].shape == (8, 1, 8, 8)
    assert "memorisation/most_copied.png" in [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "memorisation")]


def test_steps_grid_scores_each_step_count_at_the_headline_n_and_reuses_the_default(in_store):
    run_id = evaluate_run(in_store["student"], **{**FAST, "steps_grid": (2, 4, 8)})
    metrics, params = mlflow.get_run(run_id).data.metrics, mlflow.get_run(run_id).data.params
    assert params["steps_grid"] == "2,4,8" and params["steps"] == "4"
    series = {name: _history(run_id, f"grid_{name}") for name in ("kid", "kid_sd", "fid", "fid_sd", "flops_per_image",
                                                                 "latency_ms_per_image", "throughput_images_per_s")}
    assert all(sorted(s) == [2, 4, 8] for s in series.values())
    # the default step count is the headline itself (sampled once); the others are new samples of the same noise
    for name in ("kid", "kid_sd", "fid", "fid_sd", "latency_ms_per_image", "throughput_images_per_s"):
        assert series[name][4] == metrics[name]
    assert series["fid"][2] != series["fid"][4] != series["fid"][8]
    assert series["flops_per_image"] == {s: s * metrics["flops_per_forward"] for s in (2, 4, 8)}
    assert series["latency_ms_per_image"][2] < series["latency_ms_per_image"][8]
    assert metrics["grid_extra_seconds"] > 0
    plain = mlflow.get_run(evaluate_run(in_store["student"], **{**FAST, "steps": "2"})).data.metrics
    assert (plain["kid"], plain["fid"]) == (series["kid"][2], series["fid"][2])  # the same numbers as alone
    assert sorted(_history(run_id, "traj_mse")) == [0, 1, 2, 3, 4]  # behaviour stays at the default steps
    with pytest.raises(DmatError, match="between 1 and timesteps=20"):
        evaluate_run(in_store["student"], **{**FAST, "steps_grid": (2, 40)})


def test_teacher_evaluation_leaves_vs_teacher_metrics_out_and_never_overwrites(in_store):
    first = evaluate_run(in_store["teacher"], **FAST)
    second = evaluate_run(in_store["teacher"], **FAST)
    assert first != second
    metrics = mlflow.get_run(second).data.metrics
    assert set(SINGLE) <= set(metrics)
    assert not set(VS_TEACHER + ("traj_mse", "traj_cosine")) & set(metrics)
    assert mlflow.get_run(second).data.tags["dmat.teacher_run_id"] == in_store["teacher"]
    assert metrics["fid"] == mlflow.get_run(first).data.metrics["fid"]  # seeded: the same numbers again


def test_an_evaluations_floor_is_computed_once_per_key_and_read_back_by_the_next(in_store, monkeypatch):
    from dmat.evaluation import floor, quality

    computed = []
    real_values = quality.floor_values
    monkeypatch.setattr(quality, "floor_values", lambda *a: computed.append(a[1:]) or real_values(*a))
    first = mlflow.get_run(evaluate_run(in_store["teacher"], **{**FAST, "seed": 7}))
    assert computed == [(80, floor.FLOOR_DRAWS, 7)] * 4  # 2 spaces x 2 references (held-out, train), N = 80
    computed.clear()
    second = mlflow.get_run(evaluate_run(in_store["student"], **{**FAST, "seed": 7}))
    assert computed == []  # another model, the same references, N and seed: no new floor draws
    used = {k: v for k, v in first.data.tags.items() if k.startswith("dmat.floor_run_id.")}
    assert len(used) == 4 and used == {k: v for k, v in second.data.tags.items() if k in used}
    headline = mlflow.get_run(used["dmat.floor_run_id.randcnn.heldout"])
    assert headline.data.tags["dmat.role"] == "floor" and headline.data.params["floor_draws"] == "100"
    for run in (first, second):
        assert run.data.params["floor_estimate"] == floor.ESTIMATE
        assert run.data.metrics["kid_floor_sd"] == headline.data.metrics["kid_floor_sd"]


def _evaluation_count() -> int:
    return len(tracking.find_runs("evaluation", status=None))


def test_bad_inputs_fail_before_any_evaluation_run(in_store):
    before = _evaluation_count()
    client = mlflow.MlflowClient()
    killed = client.create_run(mlflow.set_experiment("dmat-test").experiment_id,
                               tags={tracking.ROLE: "teacher", tracking.DATASET: "digits"})
    client.set_terminated(killed.info.run_id, "KILLED")  # a teacher stopped before its first checkpoint
    with pytest.raises(DmatError, match="has no checkpoint"):
        evaluate_run(killed.info.run_id, **FAST)
    with pytest.raises(DmatError, match="not a model"):
        evaluate_run(in_store["extractor"], **FAST)
    with pytest.raises(DmatError, match="more samples than feature dimensions"):
        evaluate_run(in_store["teacher"], **{**FAST, "num_samples": 64})
    tags = {tracking.ROLE: "feature-extractor", tracking.DATASET: "mnist", tracking.IMAGE_SIZE: "28"}
    with tracking.tracked_run("mnist-features", tags) as other:
        pass
    with pytest.raises(DmatError, match="trained on mnist at 28px, but the model is digits at 8px"):
        evaluate_run(in_store["teacher"], feature_extractor_run_id=other.info.run_id, **FAST)
    with pytest.raises(DmatError, match="Inception weights .* not found"):
        evaluate_run(in_store["teacher"], features="inception", inception_weights="/nowhere/inception.pth", **FAST)
    assert _evaluation_count() == before


def test_evaluate_all_evaluates_each_model_once_per_settings(in_store):
    settings = {**FAST, "seed": 5}
    models = [r.info.run_id for role in ("teacher", "student") for r in tracking.find_runs(role)]
    assert {in_store["teacher"], in_store["student"]} <= set(models)
    new = evaluate_all(**settings)
    assert sorted(mlflow.get_run(r).data.tags["dmat.model_run_id"] for r in new) == sorted(models)
    assert evaluate_all(**settings) == []
    assert evaluate_all(**{**settings, "steps_grid": (4,)}) == []  # the default step count is in every evaluation
    gridded = evaluate_all(**{**settings, "steps_grid": (2, 4)})  # a step count not evaluated yet: again
    assert len(gridded) == len(models) and evaluate_all(**{**settings, "steps_grid": (2,)}) == []
    only_students = evaluate_all(**{**settings, "steps": "student"})
    assert {mlflow.get_run(r).data.tags["dmat.model_role"] for r in only_students} == {"student"}
    assert mlflow.get_run(only_students[-1]).data.params["steps"] == "3"


def test_cli_evaluate(in_store):
    runner = CliRunner()
    ok = runner.invoke(cli, ["evaluate", "--run-id", in_store["student"], "--seed", "9", "--steps-grid", "2 4",
                             *FAST_CLI])
    assert ok.exit_code == 0, ok.output
    assert "evaluation run" in ok.output
    assert mlflow.get_run(ok.output.split()[-1]).data.params["steps_grid"] == "2,4"
    bad = runner.invoke(cli, ["evaluate", "--run-id", in_store["student"], *FAST_CLI, "--num-samples", "10"])
    assert bad.exit_code == 2 and "more samples than feature dimensions" in bad.output
    neither = runner.invoke(cli, ["evaluate"])
    assert neither.exit_code == 2 and "--run-id" in neither.output


def _error_lines(result) -> list[str]:
    """dmat's own lines on stderr (MLflow may log INFO lines there when it creates a store)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_too_few_samples_are_refused_before_a_feature_extractor_is_trained(store):
    model = _student_like_run(None)  # a fresh store: no feature extractor yet
    result = CliRunner().invoke(cli, ["evaluate", "--run-id", model, *FAST_CLI, "--num-samples", "10"])
    [error] = _error_lines(result)
    assert result.exit_code == 2 and "more samples than feature dimensions" in error
    assert "N = min(num-samples=10" in error and "Traceback" not in result.output
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["tags.dmat.role"]) == ["teacher"]  # no feature-extractor run, no evaluation run


def test_evaluate_all_on_a_store_without_models_says_so(store):
    result = CliRunner().invoke(cli, ["evaluate", "--all", *FAST_CLI])
    [error] = _error_lines(result)
    assert result.exit_code == 2 and error.startswith("error: no finished teacher or student run in ")
    assert "dmat teacher" in error and "0 model(s) evaluated" not in result.output
    students_only = CliRunner().invoke(cli, ["evaluate", "--all", *FAST_CLI, "--steps", "student"])
    assert students_only.exit_code == 2 and "no finished student run" in _error_lines(students_only)[0]
    assert mlflow.search_runs(search_all_experiments=True).empty


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_evaluate_entry_point(in_store, project_env, tmp_path):
    import subprocess

    cmd = ["mlflow", "run", str(ROOT), "-e", "evaluate", "--env-manager", "local", "--experiment-name", "e2e-eval",
           "--storage-dir", str(tmp_path),
           "-P", f"run_id={in_store['student']}", "-P", "num_samples=80", "-P", "steps=student", "-P", "batch_size=40",
           "-P", "device=cpu"]
    env = {**project_env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [r for r in tracking.find_runs("evaluation", {tracking.MODEL_RUN_ID: in_store["student"]})
              if r.data.params.get("steps") == "student"]
    assert run.data.params["resolved.steps"] == "3" and "fid" in run.data.metrics
    assert mlflow.get_experiment(run.info.experiment_id).name == "e2e-eval"


@pytest.mark.slow
def test_a_distilled_student_is_evaluated_against_its_teacher(in_store):
    from dmat.stages.distill import train_student

    student = train_student(tiny_train(epochs=1), 0.5, in_store["teacher"], student_steps=3)
    run = mlflow.get_run(evaluate_run(student, **{**FAST, "steps": "student"}))
    assert run.data.params["steps"] == "3" and run.data.tags["dmat.method"] == "distill"
    assert run.data.tags["dmat.teacher_run_id"] == in_store["teacher"]
    assert set(SINGLE + VS_TEACHER) <= set(run.data.metrics)
    assert sorted(_history(run.info.run_id, "traj_mse")) == [0, 1, 2, 3]


def test_feature_extractor_inside_mlflow_run_gets_its_own_run_in_that_experiment(store, monkeypatch):
    outer = mlflow.MlflowClient().create_run(mlflow.set_experiment("project-run").experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)  # what `mlflow run` sets for its entry point
    mlflow.set_experiment("elsewhere")
    extractor = features.train_feature_extractor("digits", 8, epochs=1)
    run = mlflow.get_run(extractor)
    assert extractor != outer.info.run_id and run.data.tags["dmat.role"] == "feature-extractor"
    assert run.info.experiment_id == outer.info.experiment_id
    assert mlflow.get_run(outer.info.run_id).data.tags.get("dmat.role") is None
    assert run.data.metrics["val_accuracy"] > 0.5 and run.data.metrics["feature_dim"] == 64


@pytest.mark.slow
def test_two_evaluate_all_at_once_evaluate_each_model_once_with_one_feature_extractor(store, project_env):
    import subprocess
    import sys

    teacher = _student_like_run(None)
    models = {teacher, _student_like_run(teacher)}
    command = [sys.executable, "-m", "dmat", "evaluate", "--all", *FAST_CLI]
    both = [subprocess.Popen(command, env=project_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    runs = mlflow.search_runs(search_all_experiments=True)  # a claim's loser deleted its run: not found
    evaluations = runs[runs["tags.dmat.role"] == "evaluation"]
    assert sorted(evaluations["tags.dmat.model_run_id"]) == sorted(models), outputs
    assert set(evaluations["status"]) == {"FINISHED"}
    assert (runs["tags.dmat.role"] == "feature-extractor").sum() == 1, outputs
