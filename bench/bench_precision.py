"""Does bf16 keep the teacher's quality? The default teacher trained and evaluated in fp32 and in bf16, one run.

    .venv/bin/python bench/bench_precision.py [--epochs 15] [--num-samples 2000] [--device auto]

Trains the default teacher twice with the same seed and epochs (training precision fp32, then bf16),
evaluates each with the same settings in its own precision, in a throwaway MLflow store, and prints a
markdown table: best validation loss (always computed in fp32), FID/KID at matched N with their sd
over draws beside the real-data floor's mean and sd, training seconds per epoch and sampling images/s.
bf16 holds quality when its validation loss is within the epoch-to-epoch noise of fp32's and its
FID/KID lies inside the floor's spread of fp32's.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import mlflow

from dmat.config import TrainConfig
from dmat.evaluation.evaluate import evaluate_run
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig
from dmat.stages.teacher import train_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        os.chdir(store)  # artifacts under the throwaway store
        rows = []
        for precision in ("fp32", "bf16"):
            train = TrainConfig(epochs=args.epochs, precision=precision, device=args.device,
                                early_stopping_patience=0)
            teacher = train_teacher(train, UNetConfig(), DiffusionConfig(), experiment="bench-precision")
            evaluation = evaluate_run(teacher, num_samples=args.num_samples, precision=precision, device=args.device,
                                      experiment="bench-precision")
            t, e = mlflow.get_run(teacher).data, mlflow.get_run(evaluation).data.metrics
            seconds = [m.value for m in mlflow.MlflowClient().get_metric_history(teacher, "epoch_seconds")]
            rows.append((precision, t.params.get("resolved.precision"), t.metrics["best_val_loss"],
                         sum(seconds) / len(seconds), e))
    print(f"\ndefault teacher, {args.epochs} epochs, seed 0, {args.num_samples} samples (DDIM 50)\n")
    print("| training | ran as | best val loss | FID ± sd | FID floor ± sd | KID ± sd | KID floor ± sd | s/epoch | "
          "sampling img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision, ran, val, epoch_s, e in rows:
        print(f"| {precision} | {ran} | {val:.4f} | {e['fid']:.3f} ± {e['fid_sd']:.3f} | {e['fid_floor']:.3f} ± "
              f"{e['fid_floor_sd']:.3f} | {e['kid']:.4f} ± {e['kid_sd']:.4f} | {e['kid_floor']:.4f} ± "
              f"{e['kid_floor_sd']:.4f} | {epoch_s:.1f} | {e.get('throughput_images_per_s', float('nan')):.0f} |")
    print(f"\nbf16/fp32 training speed: {rows[0][3] / rows[1][3]:.2f}x")


if __name__ == "__main__":
    main()
