"""Wall time of an Optuna sweep with tiny settings (issue bar: a 10-trial sweep).

    .venv/bin/python bench/bench_sweep.py [--trials 10] [--workers 1] [--multi-objective]

In a temporary folder: a tiny teacher (8x8 digits, base 8 channels, T=20), then `run_sweep` with
students of at most 2 epochs evaluated on 80 samples. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import mlflow
import optuna

from dmat.config import SweepConfig, TrainConfig
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig
from dmat.stages.teacher import train_teacher
from dmat.study.sweep import run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--multi-objective", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        start = time.perf_counter()
        teacher = train_teacher(TrainConfig(image_size=8, epochs=2, batch_size=128, sample_steps=4, device="cpu"),
                                UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1),
                                DiffusionConfig(timesteps=20))
        teacher_seconds = time.perf_counter() - start
        cfg = SweepConfig(storage=f"sqlite:///{tmp}/optuna.db", study_name="bench", n_trials=args.trials,
                          workers=args.workers, multi_objective=args.multi_objective, teacher_run_id=teacher,
                          image_size=8, max_epochs=2, num_samples=80, device="cpu")
        start = time.perf_counter()
        study = run_sweep(cfg)
        seconds = time.perf_counter() - start
        states = [t.state.name for t in study.trials]
        print(json.dumps({"bench": "sweep", "trials": args.trials, "workers": args.workers,
                          "multi_objective": args.multi_objective, "sweep_seconds": round(seconds, 1),
                          "seconds_per_trial": round(seconds / args.trials, 1),
                          "teacher_seconds": round(teacher_seconds, 1),
                          "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                          "failed": states.count("FAIL")}))


if __name__ == "__main__":
    main()
