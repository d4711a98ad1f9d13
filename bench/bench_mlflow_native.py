"""What the MLflow-native extras of issue 15 cost per run: the seconds each hook adds to a training run and
an evaluation run, and the megabytes of the logged MLflow Model.

    .venv/bin/python bench/bench_mlflow_native.py             # the tests' tiny teacher and the default teacher
    .venv/bin/python bench/bench_mlflow_native.py --tiny-only

Trains each model once (1 epoch) in a temporary sqlite store with every hook timed (the pyfunc model logged
and registered, the dataset inputs, the run description, the experiment kind), then times opening and
closing an empty training run with system metrics on and off. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import tiny_diffusion, tiny_train, tiny_unet  # noqa: E402

from dmat import lineage, notes, registry, tracking  # noqa: E402
from dmat.config import TrainConfig  # noqa: E402
from dmat.model.diffusion import DiffusionConfig  # noqa: E402
from dmat.model.unet import UNetConfig  # noqa: E402
from dmat.stages.teacher import train_teacher  # noqa: E402

HOOKS = [(registry, "publish"), (lineage, "log_training_data"), (notes, "describe"), (tracking, "mark_model_development"),
         (registry, "record_evaluation"), (lineage, "log_evaluation_data")]
TINY_EVALUATION = dict(num_samples=96, steps="4", batch_size=96, num_trajectories=4, eps_timesteps=5, device="cpu")


@contextlib.contextmanager
def timing(seconds: dict):
    """Each hook's wall time adds up in `seconds` while inside."""
    originals = [(module, name, getattr(module, name)) for module, name in HOOKS]
    for module, name, original in originals:
        def timed(*args, _original=original, _name=f"{module.__name__.split('.')[-1]}.{name}", **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def model_mb(run_id: str) -> float:
    """Size of the run's logged MLflow Model folder."""
    [version] = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    folder = Path(mlflow.artifacts.download_artifacts(version.source))
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def train_once(label: str, train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> dict:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with timing(seconds):
        run_id = train_teacher(train, unet, diffusion)
    total = time.perf_counter() - start
    return {"model": label, "run_id": run_id, "run_s": round(total, 2), **{k: round(v, 3) for k, v in seconds.items()},
            "model_mb": round(model_mb(run_id), 3),
            "best_pt_mb": round(Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{tracking.CHECKPOINT_DIR}/best.pt")).stat().st_size / 2**20, 3)}


def evaluate_once(label: str, model_run_id: str) -> dict:
    from dmat.evaluation.evaluate import evaluate_run
    from dmat.evaluation.features import train_feature_extractor

    extractor = train_feature_extractor("digits", 8, epochs=1, device="cpu")  # not what is timed
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with timing(seconds):
        evaluate_run(model_run_id, feature_extractor_run_id=extractor, **TINY_EVALUATION)
    return {"model": label, "run_s": round(time.perf_counter() - start, 2), **{k: round(v, 3) for k, v in seconds.items()},
            "model_mb": 0.0}


def open_close_seconds(system_metrics: bool, repeats: int = 5) -> float:
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true" if system_metrics else "false"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with tracking.tracked_run("bench", {tracking.ROLE: tracking.TEACHER}):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true")
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="dmat-bench-"))
    mlflow.set_tracking_uri(f"sqlite:///{os.getcwd()}/mlflow.db")
    # the first model a process logs pays MLflow's one-time costs (imports, its map of installed packages)
    rows = [train_once(f"tiny (tests), {which}", tiny_train(epochs=1), tiny_unet(), tiny_diffusion())
            for which in ("first in its process", "again")]
    rows.append(evaluate_once("tiny evaluation", rows[0]["run_id"]))
    if not args.tiny_only:
        rows.append(train_once("default teacher", TrainConfig(epochs=1, device="cpu"), UNetConfig(), DiffusionConfig()))
    on, off = open_close_seconds(True), open_close_seconds(False)
    print("| model | run s | " + " | ".join(f"{m.__name__.split('.')[-1]}.{n} s" for m, n in HOOKS) + " | model MB |")
    print("|---|---|" + "---|" * len(HOOKS) + "---|")
    for row in rows:
        hooks = " | ".join(str(row.get(f"{m.__name__.split('.')[-1]}.{n}", "")) for m, n in HOOKS)
        print(f"| {row['model']} | {row['run_s']} | {hooks} | {row['model_mb']} |")
    print(f"system metrics: an empty training run opens and closes in {on:.3f} s with, {off:.3f} s without")
    print(json.dumps({"rows": rows, "open_close_s": {"system_metrics": on, "without": off}}))


if __name__ == "__main__":
    main()
