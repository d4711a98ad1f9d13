"""Bench: time `make report`'s function over a store of many evaluated runs (bar: 500 runs in <= 30 s).

A fresh sqlite store in a temporary folder gets a synthetic study logged through MlflowClient.log_batch
(teacher, students of --sizes x 2 methods x --seeds, one evaluation each, with the contract's metric
histories and artifacts); then `build_report` runs with every section, as `make report` does.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_report.py                       # 500 evaluated runs
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_report.py --sizes 3 --seeds 1  # a quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_study import log_synthetic_study  # noqa: E402

from dmat.report import SECTIONS, build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, default=50, help="student size factors, spread over 0.02..1.0")
    parser.add_argument("--seeds", type=int, default=5, help="students (and evaluations) per size and method")
    parser.add_argument("--full-mse", action="store_true", help="also time the report with every heatmap row")
    parser.add_argument("--out", default="bench/results/report.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        sizes = np.round(np.linspace(0.02, 1.0, args.sizes), 3).tolist()
        start = time.perf_counter()
        ids = log_synthetic_study("bench", sizes=sizes, seeds=tuple(range(args.seeds)))
        logged = time.perf_counter() - start
        result = {"evaluated_runs": len(ids["evaluations"]), "sizes": args.sizes, "seeds": args.seeds,
                  "log_seconds": round(logged, 1)}
        print(f"logged {result['evaluated_runs']} evaluated runs (+ teacher and problem runs) in {logged:.1f} s")
        for full_mse in (False, True) if args.full_mse else (False,):
            start = time.perf_counter()
            build_report("bench", SECTIONS, full_mse=full_mse, out_dir=Path(tmp) / f"report-{full_mse}")
            seconds = time.perf_counter() - start
            result["report_seconds" + ("_full_mse" if full_mse else "")] = round(seconds, 1)
            print(f"report (every section{', --full-mse' if full_mse else ''}): {seconds:.1f} s (bar: <= 30 s)")
    out = Path(__file__).resolve().parents[1] / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
