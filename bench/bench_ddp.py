"""Bench: training throughput of 1 vs N torchrun processes (DistributedDataParallel) on the same global batch.

Each process count trains a teacher through the real CLI (`torchrun --nproc_per_node=N -m dmat teacher`)
in a temporary store; throughput is the logged `train_images_per_s` (whole-epoch images over all
processes / epoch seconds), the median over epochs after the first. On 2 CPU cores expect little
gain: the point there is correctness. On GPUs give --device cuda and --procs up to the GPU count.
Prints one JSON line and writes it to --out.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ddp.py                # default teacher, 1 vs 2 processes
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ddp.py --tiny         # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

TINY = ["--image-size", "8", "--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks", "1",
        "--timesteps", "20", "--batch-size", "128", "--sample-steps", "4", "--num-sample-images", "4"]


def throughput(procs: int, args: list[str], store: Path) -> dict:
    uri = f"sqlite:///{store}/mlflow.db"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    experiment = f"procs-{procs}"
    cmd = [torchrun, "--standalone", f"--nproc_per_node={procs}", "-m", "dmat", "teacher", *args,
           "--experiment", experiment]
    subprocess.run(cmd, check=True, cwd=store, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=[experiment], output_format="list")[0]
    history = sorted(MlflowClient().get_metric_history(run.info.run_id, "train_images_per_s"), key=lambda m: m.step)
    rates = [m.value for m in history[1:]] or [m.value for m in history]
    return {"procs": procs, "images_per_s": statistics.median(rates), "final_val_loss": run.data.metrics["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model and images: checks the bench runs")
    parser.add_argument("--out", default="bench/results/ddp.json")
    opts = parser.parse_args()
    args = [*(TINY if opts.tiny else []), "--epochs", str(opts.epochs), "--device", opts.device,
            "--early-stopping-patience", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [throughput(n, args, Path(tmp)) for n in opts.procs]
    base = rows[0]["images_per_s"]
    result = {"device": opts.device, "tiny": opts.tiny, "epochs": opts.epochs,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "runs": [{**r, "speedup": r["images_per_s"] / base} for r in rows]}
    line = json.dumps(result)
    print(line)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
