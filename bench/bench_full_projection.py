"""Projected wall time of the full study (`make study`) on this machine, from the stage times of a short real run
of it: where the full study cannot be run (hours on a 2-core CPU), this says how many.

It runs `dmat pipeline --preset full` in a fresh store with its settings (teacher width, sizes, sampling steps and
steps grid) but 3 epochs per model, one seed, one students loop (distill, pruned init), one stage at a time and a
quarter of the evaluation N, then projects the full study serially: the teacher's and the loop's seconds per epoch
(the interval between their epochs' val_loss timestamps, validation included) times the epochs to convergence, 12
students loops (3 seeds x 2 inits x 2 methods; a from-scratch loop, which skips the teacher's forward pass, is
counted at the distill loop's cost: an upper bound), each model's measured evaluation seconds scaled to the full N
(sampling and feature extraction grow with N; what does not is scaled too: an upper bound) for the 73 models, and
the side-by-side timing scaled by the number of models. Convergence epochs are unknown before the run, so the
projection is a table over them, up to the preset's caps.

    .venv/bin/python bench/bench_full_projection.py            # ~20 min on a 2-core CPU without bf16
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from dmat.config.study import PRESETS

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
EVAL_SHARE = 4  # evaluations at 1/4 of the full preset's N, their seconds scaled by 4
LOOPS = 3 * 2 * 2  # seeds x inits x methods of the full preset
CONVERGENCE = ((50, 50), (100, 100), (150, 300), (300, 600))  # (teacher, student) epochs; the last: the caps


def per_epoch(run_id: str) -> float:
    """Seconds between a run's epochs: its val_loss timestamps, validation and checkpointing included."""
    stamps = sorted(m.timestamp for m in MlflowClient().get_metric_history(run_id, "val_loss"))
    return (stamps[-1] - stamps[0]) / 1000 / (len(stamps) - 1)


def main() -> None:
    store = Path(tempfile.mkdtemp(prefix="bench-full-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "bench"}
    command = [sys.executable, "-m", "dmat", "pipeline", "--preset", "full", "--teacher-epochs", str(EPOCHS),
               "--student-epochs", str(EPOCHS), "--seeds", "0", "--methods", "distill", "--inits", "pruned",
               "--workers", "1", "--num-samples", str(PRESETS["full"]["num_samples"] // EVAL_SHARE), *sys.argv[1:]]
    start = time.perf_counter()
    try:
        subprocess.run(command, env=env, cwd=store, check=True)
        wall = time.perf_counter() - start
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=["bench"])
        pipeline = runs[runs["tags.dmat.role"] == "pipeline"].iloc[0]
        seconds = {k[len("metrics.seconds_"):]: v for k, v in pipeline.items()
                   if k.startswith("metrics.seconds_") and v == v}
        teacher = runs[runs["tags.dmat.role"] == "teacher"].iloc[0]["run_id"]
        student = runs[runs["tags.dmat.role"] == "student"].iloc[0]["run_id"]
        evaluations = {k: v * EVAL_SHARE for k, v in seconds.items() if k.startswith("evaluate")}
        teacher_eval = max(v for k, v in evaluations.items() if "teacher" in k)  # with the feature extractor
        student_evals = sum(v for k, v in evaluations.items() if "teacher" not in k)
        fixed = teacher_eval + LOOPS * student_evals + seconds.get("cost", 0) * (1 + 6 * LOOPS) / 7 \
            + seconds.get("report", 0)
        t_epoch, loop_epoch = per_epoch(teacher), per_epoch(student)
        table = [{"teacher_epochs": t, "student_epochs": s,
                  "hours": round((t * t_epoch + LOOPS * s * loop_epoch + fixed) / 3600, 1)} for t, s in CONVERGENCE]
        result = {"short_run_wall_s": round(wall, 1), "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
                  "teacher_s_per_epoch": round(t_epoch, 1), "students_loop_s_per_epoch": round(loop_epoch, 1),
                  "evaluations_and_timing_and_report_h": round(fixed / 3600, 2), "projected_full_study": table}
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
