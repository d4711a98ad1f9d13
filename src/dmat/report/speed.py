"""What the side-by-side timings of `dmat cost` say: how much faster each size is than the teacher, beside how
many fewer FLOPs it has, and where a smaller student stops being faster (fixed costs dominate).

Read from the newest finished `cost` run of the experiment (its `cost/side_by_side.json`); a study without
one says how to make it.
"""

from __future__ import annotations

import statistics

import mlflow
import pandas as pd

from dmat import tracking


def side_by_side_rows(experiment_id: str) -> list[dict] | None:
    """The rows of the experiment's newest finished cost run, or None when it has none."""
    runs = tracking.find_runs(tracking.COST, experiment_ids=[experiment_id], max_results=1)
    if not runs:
        return None
    return mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/{tracking.SIDE_BY_SIDE_TABLE}")["rows"]


SIDE_BY_SIDE_MS = "side_by_side_ms"  # a summary column: the model's forward pass at batch 1, timed side by side


def with_side_by_side_ms(table: pd.DataFrame, rows: list[dict]) -> tuple[pd.DataFrame, tuple[str, str]]:
    """The summary table with SIDE_BY_SIDE_MS, and that column's label: each model's median ms per forward pass at
    the smallest batch timed, over its seeds. Evaluations may run beside other stages (pipeline workers), so their
    own latencies are not comparable; these are. A forward pass depends on the architecture only (size,
    resolution), not on the training, so every row of one size shares it; the teacher's is its own."""
    batch = min(r["batch_size"] for r in rows)
    by_model: dict[tuple, list[float]] = {}
    for r in rows:
        if r["batch_size"] == batch:
            key = (r["role"] == tracking.TEACHER, float(r["size_factor"]), float(r["image_size"]))
            by_model.setdefault(key, []).append(r["ms_per_forward"])
    keys = zip(table.method == tracking.TEACHER, table.size_factor.astype(float), table.image_size.astype(float))
    ms = [statistics.median(by_model[k]) if k in by_model else float("nan") for k in keys]
    return table.assign(**{SIDE_BY_SIDE_MS: ms}), (SIDE_BY_SIDE_MS, f"ms per forward pass, batch {batch} (timed side by side)")


def speed_sentences(rows: list[dict]) -> list[str]:
    """Per batch size: how much faster than the teacher each size is, beside how many fewer FLOPs it has, and
    the largest size below which a smaller model stops being faster (within 10%)."""
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
        parts, floor, previous = [], None, None
        for size in sorted(by_size, reverse=True):
            ms = statistics.median(r["ms_per_forward"] for r in by_size[size])  # over seeds
            flops = by_size[size][0]["flops_per_forward"]
            parts.append(f"{size:g}: {teacher['flops_per_forward'] / flops:.1f}x fewer FLOPs, "
                         f"{teacher['ms_per_forward'] / ms:.1f}x faster")
            if previous is not None and floor is None and ms > 0.9 * previous[1]:
                floor = previous[0]
            previous = (size, ms)
        text = f"At batch {batch}, against the teacher: " + "; ".join(parts) + "."
        if floor is not None:
            text += f" Below size {floor:g} a smaller student is no longer faster (within 10%): fixed costs dominate."
        out.append(text)
    return out
