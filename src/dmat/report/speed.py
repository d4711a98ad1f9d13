"""What the side-by-side timings of `dmat cost` say: how much faster each size is than the teacher, beside how
many fewer FLOPs it has, and where a smaller student stops being faster (fixed costs dominate); and the report's one
latency per image, which every table, figure and frontier reads (one_latency).

Read from the newest finished `cost` run of the experiment (its `cost/side_by_side.json`); a study without
one says how to make it.
"""

from __future__ import annotations

import statistics

import mlflow
import pandas as pd

from dmat import tracking
from dmat.config.metrics import grid_key


def side_by_side_rows(experiment_id: str) -> list[dict] | None:
    """The rows of the experiment's newest finished cost run, or None when it has none."""
    runs = tracking.find_runs(tracking.COST, experiment_ids=[experiment_id], max_results=1)
    if not runs:
        return None
    return mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/{tracking.SIDE_BY_SIDE_TABLE}")["rows"]


LATENCY = "latency_ms_per_image"
OWN_LATENCY = "ms / image, batch 1, each in its own evaluation, not timed side by side"


def one_latency(evaluations: pd.DataFrame, histories: pd.DataFrame,
                rows: list[dict] | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The report's one latency, and its label: each evaluation's LATENCY (and each point of its steps grid) made its
    model's median ms per forward pass at the smallest batch timed side by side, times the sampling steps. Evaluations
    may run beside other stages, so their own timings are not comparable across models; a cost run times every model
    in one process. Each model run is timed apart, so a size's interval is over its seeds' timings; a model the cost
    run did not time has none (n/a) rather than a latency of another kind. Without a cost run: the evaluations' own."""
    if not rows:
        return evaluations, histories, OWN_LATENCY
    batch = min(r["batch_size"] for r in rows)
    forward = evaluations.model_run_id.map({r["run_id"]: r["ms_per_forward"] for r in rows if r["batch_size"] == batch})
    grid = histories.key == grid_key(LATENCY)
    per_step = histories.run_id.map(dict(zip(evaluations.run_id, forward)))
    histories = histories.assign(value=histories.value.where(~grid, per_step * histories.step))
    steps = evaluations.steps.dropna().unique()
    said = f"{steps[0]:g} steps" if len(steps) == 1 else "each evaluation's steps"
    return (evaluations.assign(**{LATENCY: forward * evaluations.steps}), histories,
            f"ms / image, batch {batch}, {said}, timed side by side")


def speed_sentences(rows: list[dict]) -> list[str]:
    """Per batch size: how much faster than the teacher each size is, beside how many fewer FLOPs it has, and the
    largest size that no smaller one beats by more than 10% (compared with that size, not with the teacher, so that
    a smaller size still faster than the teacher does not contradict it)."""
    out = []
    for batch in sorted({r["batch_size"] for r in rows}):
        at = [r for r in rows if r["batch_size"] == batch]
        teacher = next((r for r in at if r["role"] == tracking.TEACHER), None)
        by_size: dict[float, list[dict]] = {}
        for r in at:
            if r["role"] == tracking.STUDENT:
                by_size.setdefault(r["size_factor"], []).append(r)
        if teacher is None or not by_size:
            continue
        sizes = sorted(by_size, reverse=True)
        ms = {size: statistics.median(r["ms_per_forward"] for r in by_size[size]) for size in sizes}  # over seeds
        parts = [f"{size:g}: {teacher['flops_per_forward'] / by_size[size][0]['flops_per_forward']:.1f}x fewer FLOPs, "
                 f"{teacher['ms_per_forward'] / ms[size]:.1f}x faster" for size in sizes]
        floor = next((size for i, size in enumerate(sizes[:-1])
                      if min(ms[smaller] for smaller in sizes[i + 1:]) > 0.9 * ms[size]), None)
        text = f"At batch {batch}, against the teacher: " + "; ".join(parts) + "."
        if floor is not None:
            text += (f" Below size {floor:g} no smaller student is more than 10% faster than size {floor:g}: fixed "
                     "costs dominate.")
        out.append(text)
    return out
