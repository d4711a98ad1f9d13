"""A synthetic but real MLflow study: runs logged with the contract's tags, params, metrics, histories
and artifacts through MlflowClient.log_batch, so report tests and the report bench need no training.

Values follow simple known formulas, so tests can compare the report's numbers with what was logged.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dmat.config.metrics import HEADLINE_SPACE, HEADLINE_SPACE_PARAM, METRICS, REFERENCES, grid_key, per_reference
from dmat.config.training import PRUNED

TIMESTEPS, STEPS, EPOCHS, IMAGE, TRAIN_IMAGES = 20, 10, 4, 8, 1000


def fid_of(size: float, method: str, seed: int, init: str | None = None) -> float:
    penalty = {"teacher": 1.0, "distill": 1.0, "scratch": 1.4}[method] * (0.8 if init == PRUNED else 1.0)
    return 5.0 + 30.0 * (1.0 - size) ** 2 * penalty + 0.3 * seed


def _batch(client, run_id, metrics=None, histories=None, params=None, tags=None):
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    entries += [Metric(k, float(v), now, int(step)) for k, series in (histories or {}).items() for step, v in series]
    for i in range(0, max(len(entries), 1), 1000):
        client.log_batch(run_id, metrics=entries[i:i + 1000], params=[Param(k, str(v)) for k, v in (params or {}).items()]
                         if i == 0 else [], tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()] if i == 0 else [],
                         synchronous=True)


def _model_run(client, exp_id, role, method, size, seed, status="FINISHED", init=None, still_improving=None):
    tags = {"dmat.role": role, "dmat.method": method, "dmat.size_factor": size, "dmat.dataset": "digits",
            "dmat.image_size": IMAGE, **({"dmat.init": init} if init else {})}
    run = client.create_run(exp_id, run_name=f"{role}-{method}-{size:g}-s{seed}", tags=tags)
    params = {"size_factor": size, "method": method, "seed": seed, "kd_weight": 1.0, "task_weight": 0.0,
              "feature_weight": 0.0, "student_steps": TIMESTEPS}
    history = {"train_task_loss": [(e, 0.5 * (2 - size) / e) for e in range(1, EPOCHS + 1)],
               "val_task_loss": [(e, 0.55 * (2 - size) / e) for e in range(1, EPOCHS + 1)]}
    budget = {"best_epoch": EPOCHS - 1, "epochs_run": EPOCHS, "train_images": TRAIN_IMAGES,
              **({"still_improving": float(still_improving)} if still_improving is not None else {})}
    _batch(client, run.info.run_id, {"num_parameters": params_of(size), "flops_per_forward": 1e6 * size, **budget},
           history, params)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def params_of(size: float) -> int:
    return int(2_000_000 * size ** 2 + 10_000)


def _arrays(seed: int, size: float, folder: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    teacher = np.cumsum(rng.normal(size=(2, STEPS + 1, 1, IMAGE, IMAGE)), axis=1).astype(np.float32) / 4
    model = teacher + (1 - size) * rng.normal(size=teacher.shape).astype(np.float32) / 4
    states = np.clip(model[:1, ::2], -1, 1)
    (folder / "denoising").mkdir(parents=True, exist_ok=True)
    (folder / "trajectories").mkdir(parents=True, exist_ok=True)
    np.savez(folder / "denoising" / "states.npz", states=states, timesteps=np.arange(TIMESTEPS, -1, -4)[: states.shape[1]])
    np.savez(folder / "trajectories" / "trajectories.npz", model=model, teacher=teacher,
             timesteps=np.linspace(TIMESTEPS, 0, STEPS + 1).astype(int))
    (folder / "memorisation").mkdir(parents=True, exist_ok=True)
    samples = np.clip(model[:, -1], -1, 1)
    np.savez(folder / "memorisation" / "most_copied.npz", samples=samples, neighbours=np.clip(teacher[:, -1], -1, 1),
             distances=np.sort(np.abs(rng.normal(size=len(samples)))), threshold=np.array(0.5))
    return (folder / "denoising" / "states.npz", folder / "trajectories" / "trajectories.npz",
            folder / "memorisation" / "most_copied.npz")


def quality_metrics(fid: float, copy_rate: float) -> dict[str, float]:
    """The matched-N quality metrics an evaluation logs (evaluation/quality.py), against the train split."""
    headline = {"fid": fid, "fid_sd": fid / 20, "fid_floor": 2.0, "fid_floor_sd": 0.2, "kid": fid / 100,
                "kid_sd": fid / 2000, "kid_floor": 0.01, "kid_floor_sd": 0.002}
    return {**headline, **{per_reference(k, "train"): v for k, v in headline.items()}, "quality_n": 32, "quality_draws": 10,
            "copy_rate_pixel": copy_rate, "copy_rate_feature": copy_rate, "nn_distance_pixel": 2.0,
            "nn_distance_pixel_heldout": 2.1, "nn_distance_feature": 1.0, "nn_distance_feature_heldout": 1.1}


def kid_at(kid: float, steps: int) -> float:
    """A model's KID at `steps` sampling steps, from its KID at STEPS: fewer steps, worse samples."""
    return kid * (1 + 2.0 / steps) / (1 + 2.0 / STEPS)


def grid_series(kid: float, size: float, steps_grid) -> dict[str, list[tuple[int, float]]]:
    """The grid_* series an evaluation with --steps-grid logs (step = sampling steps), STEPS always in it."""
    steps = sorted({*steps_grid, STEPS})
    return {grid_key("kid"): [(s, kid_at(kid, s)) for s in steps],
            grid_key("fid"): [(s, 100 * kid_at(kid, s)) for s in steps],
            grid_key("flops_per_image"): [(s, s * 1e6 * size) for s in steps],
            grid_key("latency_ms_per_image"): [(s, (1.0 + 4 * size) * s / STEPS) for s in steps]}


def declared(name: str) -> bool:
    """Whether a logged metric is one of dmat.config.metrics' (or its score against one real reference)."""
    return name in METRICS or any(name == per_reference(m, r) for m in METRICS for r in REFERENCES)


def _evaluation_run(client, exp_id, model_run_id, teacher_id, role, method, size, seed, artifacts=True,
                    drop=(), status="FINISHED", extra=None, init=None, steps_grid=(), params=None):
    tags = {"dmat.role": "evaluation", "dmat.model_run_id": model_run_id, "dmat.model_role": role,
            "dmat.method": method, "dmat.size_factor": size, "dmat.dataset": "digits", "dmat.image_size": IMAGE,
            "dmat.teacher_run_id": teacher_id, "dmat.feature_extractor_run_id": "none", **({"dmat.init": init} if init else {})}
    run = client.create_run(exp_id, run_name=f"eval-{method}-{size:g}-s{seed}", tags=tags)
    gap = 0.0 if role == "teacher" else (1 - size) + 0.05
    metrics = {**quality_metrics(fid_of(size, method, seed, init), 0.01 + 0.02 * size), "precision": 0.5 + size / 3,
               "recall": 0.4 + size / 3,
               "num_parameters": params_of(size), "flops_per_forward": 1e6 * size, "checkpoint_mb": size,
               "latency_ms_per_image": 1.0 + 4 * size, "throughput_images_per_s": 1000 / (1 + 4 * size),
               "peak_memory_mb": 10 * size, "final_mse": gap / 10, "traj_mse_mean": gap / 20,
               "traj_cosine_mean": 1 - gap / 10, "path_length": 3.0, "teacher_path_length": 3.0}
    if role == "teacher":  # nothing to compare the teacher with: absent, as in a real evaluation
        drop = (*drop, "final_mse", "traj_mse_mean", "traj_cosine_mean")
    assert all(map(declared, metrics)), [m for m in metrics if not declared(m)]  # the registry's names only
    metrics = {k: v for k, v in {**metrics, **(extra or {})}.items() if k not in drop}
    histories = {"traj_mse": [(s, gap * s / STEPS) for s in range(STEPS + 1)],
                 "traj_cosine": [(s, 1 - gap * s / STEPS / 10) for s in range(STEPS + 1)],
                 "eps_mse_teacher": [(t, gap * (0.1 + t / TIMESTEPS)) for t in range(TIMESTEPS)],
                 "eps_mse_true": [(t, 0.05 + gap / 10 + 1 / (t + 1)) for t in range(TIMESTEPS)],
                 **(grid_series(metrics["kid"], size, steps_grid) if steps_grid else {})}
    logged = {"sampler": "ddim", "steps": STEPS, "num_samples": 64, "features": "classifier", "seed": seed,
              "floor_draws": 10, "reference": "train", HEADLINE_SPACE_PARAM: HEADLINE_SPACE, **(params or {})}
    _batch(client, run.info.run_id, metrics, histories, {k: v for k, v in logged.items() if v is not None})
    if artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            for path in _arrays(seed, size, Path(tmp)):
                client.log_artifact(run.info.run_id, str(path), path.parent.name)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def log_synthetic_study(experiment: str, sizes=(0.2, 0.5), methods=("distill", "scratch"), seeds=(0,),
                        artifacts=True, problems=True, steps_grid=(), inits=(None,)) -> dict:
    """Log a teacher, students of `sizes` x `methods` x `inits` x `seeds` and their evaluations.

    With `problems`, also a FAILED student, a finished student without an evaluation and an
    evaluation without FID. With `steps_grid`, every evaluation logs grid_* series at those steps (and
    STEPS). An init (e.g. "pruned") tags its students; None leaves them untagged, as before --init. The
    smallest size's seed-0 students say they were still improving, the others that they were not.
    Returns the run ids by kind.
    """
    client = MlflowClient()
    exp_id = client.create_experiment(experiment)
    teacher = _model_run(client, exp_id, "teacher", "teacher", 1.0, 0)
    ids = {"teacher": teacher, "students": [], "evaluations": [
        _evaluation_run(client, exp_id, teacher, teacher, "teacher", "teacher", 1.0, 0, artifacts, steps_grid=steps_grid)]}
    for size, method, init, seed in ((z, m, i, s) for z in sizes for m in methods for i in inits for s in seeds):
        student = _model_run(client, exp_id, "student", method, size, seed, init=init,
                             still_improving=size == min(sizes) and seed == 0)
        ids["students"].append(student)
        ids["evaluations"].append(_evaluation_run(client, exp_id, student, teacher, "student", method, size, seed,
                                                  artifacts, init=init, steps_grid=steps_grid))
    if problems:
        ids["failed"] = _model_run(client, exp_id, "student", "distill", 0.3, 0, status="FAILED")
        ids["unevaluated"] = _model_run(client, exp_id, "student", "distill", 0.7, 0)
        no_fid = _model_run(client, exp_id, "student", "scratch", 0.7, 0)
        ids["no_fid"] = _evaluation_run(client, exp_id, no_fid, teacher, "student", "scratch", 0.7, 0, artifacts,
                                        drop=("fid",))
    return ids
