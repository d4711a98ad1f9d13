"""One study with --workers 1 and with --workers 2, each in a fresh store: wall time of each and whether the same
stages logged the same metrics (the default of `--workers` follows from this on the hardware it ran on).

    OMP_NUM_THREADS= .venv/bin/python bench/bench_workers.py                 # the quick preset (2 x ~15 min on 2 cores)
    .venv/bin/python bench/bench_workers.py --teacher-epochs 2 --student-epochs 1 --num-samples 200   # a quick check

Extra arguments go to `dmat pipeline` unchanged. Each slot gets cores // workers threads (dmat.study.executor), so
with 2 cores the comparison is one stage at a time with 2 threads against two stages at once with 1 thread each.
Metrics are compared per stage label with a relative tolerance: a different thread count sums in another order.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("fid", "kid", "val_loss", "best_val_loss")


def run_study(workers: int, extra: list[str]) -> tuple[float, dict[str, dict[str, float]]]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-workers-{workers}-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "bench",
           "TMPDIR": str(folder)}
    env.pop("OMP_NUM_THREADS", None)  # each slot sets its own
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("dmat")), "pipeline", "--preset", "quick", "--workers",
                    str(workers), "--reuse-any-commit", "true", "--system-metrics", "false", *extra],
                   cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True)
    metrics = {}
    for _, run in runs.iterrows():
        label = run.get("tags.mlflow.runName")
        values = {m: run.get(f"metrics.{m}") for m in COMPARED}
        metrics[label] = {m: v for m, v in values.items() if v is not None and not math.isnan(v)}
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, metrics


def largest_difference(a: dict, b: dict) -> float:
    diffs = [abs(a[k][m] - b[k][m]) / max(abs(a[k][m]), 1e-12) for k in a.keys() & b.keys() for m in a[k].keys() & b[k]]
    return max(diffs, default=float("nan"))


def main() -> None:
    extra = sys.argv[1:]
    one, metrics_one = run_study(1, extra)
    two, metrics_two = run_study(2, extra)
    print(f"cores {os.cpu_count()}: --workers 1 {one:.0f} s, --workers 2 {two:.0f} s, ratio (1 / 2) {one / two:.2f}")
    print(f"stages compared: {len(metrics_one.keys() & metrics_two.keys())}; largest relative metric difference "
          f"{largest_difference(metrics_one, metrics_two):.2e}")


if __name__ == "__main__":
    main()
