"""Bench: wall time of evaluating one default model (bar: <= 3 minutes on the 2-thread CPU).

In a temporary store it logs a teacher of the default architecture and a half-width student of it
(untrained weights: the time does not depend on them), trains the digits feature extractor once
(a one-off per data set and size, timed apart), then times `evaluate_run` on both with the default
settings (2000 samples, DDIM, 50 steps; --steps-grid 5,10,20,50 adds the pipeline's steps grid, whose extra
seconds the evaluation logs as grid_extra_seconds). Give --run-id to time a real run of the current store
instead. Prints one JSON line and writes it to --out.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_evaluate.py                  # the bar (default sizes)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_evaluate.py --tiny           # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

from dmat import tracking
from dmat.config.evaluation import EvalConfig
from dmat.evaluation.evaluate import evaluate_run
from dmat.evaluation.features import feature_extractor_for
from dmat.model import checkpoint
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.unet import UNet, UNetConfig

TINY = dict(image_size=8, base_channels=8, timesteps=20, num_samples=100, steps="4", batch_size=100)


def log_untrained_model(role: str, unet: UNetConfig, diffusion: DiffusionConfig, teacher_id: str | None = None) -> str:
    tags = {tracking.ROLE: role, tracking.DATASET: "digits", tracking.IMAGE_SIZE: str(unet.image_size),
            tracking.SIZE_FACTOR: str(unet.size_factor), tracking.METHOD: "teacher" if role == "teacher" else "distill"}
    if teacher_id:
        tags[tracking.TEACHER_RUN_ID] = teacher_id
    with tracking.tracked_run(f"bench-{role}", tags) as run:
        model = UNet(unet)
        tracking.save_checkpoint(checkpoint.model_checkpoint(model, GaussianDiffusion(diffusion), model.state_dict()),
                                 checkpoint.BEST)
        return run.info.run_id


def timed_evaluation(run_id: str, cfg: EvalConfig) -> dict:
    start = time.perf_counter()
    eval_id = evaluate_run(run_id, cfg)
    metrics = mlflow.get_run(eval_id).data.metrics
    keep = ("quality_n", "kid", "kid_sd", "kid_floor", "kid_floor_sd", "fid", "fid_sd", "fid_floor", "fid_floor_sd",
            "copy_rate_pixel", "copy_rate_feature", "num_parameters", "latency_ms_per_image", "throughput_images_per_s",
            "peak_memory_mb", "grid_extra_seconds")
    return {"seconds": round(time.perf_counter() - start, 1), **{k: metrics[k] for k in keep if k in metrics}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="time this model run of the current store instead of logging untrained ones")
    parser.add_argument("--tiny", action="store_true", help="8x8, base channels 8, T=20, 100 samples, 4 steps")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--student-size", type=float, default=0.5)
    parser.add_argument("--num-samples", type=int, default=EvalConfig.num_samples)
    parser.add_argument("--steps", default=EvalConfig.steps)
    parser.add_argument("--steps-grid", default="", help="comma-separated step counts, e.g. 5,10,20,50")
    parser.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/evaluate.json")
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    grid = tuple(int(s) for s in args.steps_grid.split(",") if s)
    cfg = EvalConfig(num_samples=args.num_samples, steps=str(args.steps), steps_grid=grid, batch_size=args.batch_size,
                     device=args.device)
    result = {"threads": torch.get_num_threads(), "settings": vars(cfg)}

    with tempfile.TemporaryDirectory() as tmp:
        if not args.run_id:
            mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
            os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
            unet = UNetConfig(image_size=args.image_size, base_channels=args.base_channels)
            diffusion = DiffusionConfig(timesteps=args.timesteps)
            teacher = log_untrained_model("teacher", unet, diffusion)
            student = log_untrained_model("student", dataclasses.replace(unet, size_factor=args.student_size),
                                          diffusion, teacher)
            start = time.perf_counter()
            feature_extractor_for("digits", args.image_size, device=args.device)
            result["feature_extractor_seconds"] = round(time.perf_counter() - start, 1)
            result["teacher"] = timed_evaluation(teacher, cfg)
            result["student"] = timed_evaluation(student, cfg)
        else:
            result["model"] = timed_evaluation(args.run_id, cfg)
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
