"""Bench: may DPM-Solver++(2M) replace DDIM-50 as a study's headline sampler? (issue 28's sampler lever, its rule)

The rule: only where its KID at its step count is within one floor-sd of DDIM-50's, in both feature spaces, on the
teacher and on the smallest student of a finished study. Each model given is evaluated with DDIM at 50 steps and
with dpmpp2m at 20 and 10 (the study's settings otherwise: 1,000 samples, one seed, so the same starting noise and
draws) into the experiment `sampler-check` (the study's own stays all DDIM-50); per model and sampler it prints both
KIDs, their gap to DDIM-50's in floor sds, and the evaluation's seconds and its ratio to DDIM-50's.

    MLFLOW_TRACKING_URI=sqlite:///$HOME/dmat-study/mlflow.db .venv/bin/python bench/bench_sampler_check.py \\
        TEACHER_RUN_ID SMALLEST_STUDENT_RUN_ID

On the digits study (results/digits), 2-core Intel Xeon with AMX, idle: the teacher's random-CNN KID moves -7.3
floor-sd at dpmpp2m-20 (-28 at 10), the size-0.2 student's -25 (-62); the classifier's KID within 0.5 sd at 20
steps (0.4 for the student), 1.4 at 10. So no: DDIM-50 stays the headline, at 0.41x the evaluation time for the
teacher at 20 steps (0.26x at 10).
"""

from __future__ import annotations

import sys
import time

from mlflow.tracking import MlflowClient

from dmat.evaluation.evaluate import evaluate_run

SAMPLERS = (("ddim", 50), ("dpmpp2m", 20), ("dpmpp2m", 10))
SPACES = ("kid", "kid_classifier")


def main(run_ids: list[str]) -> None:
    client = MlflowClient()
    for run_id in run_ids:
        scores = {}
        for sampler, steps in SAMPLERS:
            start = time.perf_counter()
            evaluation = evaluate_run(run_id, experiment="sampler-check", sampler=sampler, steps=str(steps),
                                      steps_grid=(), num_samples=1000)
            scores[(sampler, steps)] = (client.get_run(evaluation).data.metrics, time.perf_counter() - start)
        base, base_seconds = scores[SAMPLERS[0]]
        for (sampler, steps), (m, seconds) in scores.items():
            gaps = {s: (m[s] - base[s]) / base[f"{s}_floor_sd"] for s in SPACES}
            within = all(abs(g) <= 1 for g in gaps.values())
            print(f"{run_id[:8]} {sampler}-{steps}: " + ", ".join(f"{s} {m[s]:.4g} ({gaps[s]:+.2f} floor-sd)"
                                                                   for s in SPACES)
                  + f"; evaluation {seconds:.0f} s ({seconds / base_seconds:.2f}x); within one floor-sd: {within}")


if __name__ == "__main__":
    main(sys.argv[1:])
