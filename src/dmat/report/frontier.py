"""Quality per inference budget: every (model size, sampling steps) pair as a point of quality against the
sampling cost of one image, and the Pareto frontier over them.

A point is a (method, init, resolution, budget, size, steps) group: its KID and FID are the mean over the group's
evaluations (seeds) with their 95% interval; its cost is steps x FLOPs per forward (`grid_flops_per_image`, what the
evaluation counted) or the report's one latency per image (speed.one_latency, applied where the report gathers its
inputs). Points come from the evaluations' steps grids (`grid_*` metric series, step = sampling steps), and from an
evaluation's own steps where it has no grid.
A budget band is the range of costs between two neighbouring frontier points: within it the cheaper one
is the best quality that fits the budget, since the next better one costs more than the band allows. Each
resolution has its own frontier: its KID and FID are against real images of its own size, in other features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmat.config.metrics import GRID_COSTS, GRID_QUALITIES, grid_key
from dmat.report.tables import GROUP, key_text, mean_ci, namer, pareto_mask, several, with_keys

QUALITIES = GRID_QUALITIES  # kid, fid
COSTS = {"flops_per_image": "sampling FLOPs per image", "latency_ms_per_image": "latency per image, ms"}
assert set(COSTS) <= set(GRID_COSTS), "each cost is a grid metric of dmat.config.metrics"
GRID_KEYS = tuple(grid_key(name) for name in (*QUALITIES, *COSTS))  # grid_kid, grid_fid, grid_flops_per_image, ...


def grid_points(evaluations: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per (evaluation, steps): kid, fid, flops_per_image, latency_ms_per_image, with the evaluation's
    GROUP keys and model_seed; an evaluation without a grid contributes its own steps."""
    evaluations = with_keys(evaluations)
    grid = histories[histories.key.isin(GRID_KEYS)]
    wide = grid.pivot_table(index=["run_id", "step"], columns="key", values="value").reset_index()
    wide = wide.rename(columns={"step": "steps", **{k: k.removeprefix("grid_") for k in GRID_KEYS}})
    info = evaluations.reindex(columns=["run_id", *GROUP, "model_seed"])
    gridded = wide.merge(info, on="run_id")
    plain = evaluations[~evaluations.run_id.isin(gridded.run_id)].reindex(
        columns=["run_id", *GROUP, "model_seed", *QUALITIES, "latency_ms_per_image", "flops_per_forward", "steps"])
    plain["steps"] = pd.to_numeric(plain.steps, errors="coerce")
    plain["flops_per_image"] = plain.steps * plain.flops_per_forward
    columns = ["run_id", *GROUP, "model_seed", "steps", *QUALITIES, *COSTS]
    return pd.concat([gridded.reindex(columns=columns), plain.reindex(columns=columns)], ignore_index=True)


def budget_points(points: pd.DataFrame) -> pd.DataFrame:
    """Per GROUP and steps: n, mean kid/fid with `<name>_ci95` over seeds, mean costs."""
    rows = []
    for keys, group in points.groupby([*GROUP, "steps"]):
        row = dict(zip([*GROUP, "steps"], keys), n=len(group))
        for name in (*QUALITIES, *COSTS):
            row[name], row[f"{name}_ci95"] = mean_ci(group[name])
        rows.append(row)
    columns = [*GROUP, "steps", "n", *(c for name in (*QUALITIES, *COSTS) for c in (name, f"{name}_ci95"))]
    return pd.DataFrame(rows, columns=columns)


def frontier(points: pd.DataFrame, cost: str, quality: str = "kid") -> pd.DataFrame:
    """The Pareto-optimal points of each resolution (no other of it is at most as costly and at most as bad, one of
    them strictly), larger images first, each cheapest first."""
    ok = with_keys(points).dropna(subset=[cost, quality])
    front = pd.concat([part[pareto_mask(part[cost], part[quality])] for _, part in ok.groupby("image_size")] or [ok])
    front = front.sort_values(["image_size", cost], ascending=[False, True])
    return front.drop_duplicates(["image_size", cost, quality]).reset_index(drop=True)  # of exact ties, one


def point_label(row, name) -> str:
    """A frontier point in a sentence; `name`: namer() of the study's points (the resolution is said per part)."""
    if row.method == "teacher":
        return f"teacher at {row.steps:g} steps"
    return f"size {row.size_factor:g} {name(row.method, row.init, None, row.epochs)} at {row.steps:g} steps"


def cost_text(value: float, cost: str) -> str:
    if cost == "latency_ms_per_image":
        return f"{value:.3g} ms"
    for scale, unit in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOPs"


def _quality_text(row, quality: str) -> str:
    ci = row[f"{quality}_ci95"]
    return f"{quality.upper()} {row[quality]:.3g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


def band_sentences(front: pd.DataFrame, cost: str, quality: str = "kid", name=None) -> list[str]:
    """For each budget band of the frontier, which (size, steps) gives the best quality within it; each resolution's
    sentences begin with it where the frontier has several. `name`: namer() of all the points (default: of the
    frontier's), so that a model's training budget is said wherever the study has several."""
    if front.empty:
        return [f"No (size, steps) point has both {quality.upper()} and {COSTS[cost]}."]
    front, name = with_keys(front), name or namer(front)
    apart = several(front, "image_size")
    return [f"At {key_text('image_size', px)}: {line}" if apart else line
            for px, part in front.groupby("image_size", sort=False) for line in _bands(part, cost, quality, name)]


def _bands(front: pd.DataFrame, cost: str, quality: str, name) -> list[str]:
    costs = [cost_text(v, cost) for v in front[cost]]
    lines = [f"Below {costs[0]} ({COSTS[cost]}) no evaluated (size, steps) fits."]
    for i, (_, row) in enumerate(front.iterrows()):
        span = f"from {costs[i]} to {costs[i + 1]}" if i + 1 < len(front) else f"{costs[i]} and above"
        lines.append(f"Budget {span} ({COSTS[cost]}): best is {point_label(row, name)} "
                     f"({_quality_text(row, quality)}).")
    return lines


def budget_study(evaluations: pd.DataFrame, histories: pd.DataFrame):
    """(points per (size, steps) group, {(quality, cost): frontier}, {cost: KID band sentences})."""
    points = budget_points(grid_points(evaluations, histories))
    fronts = {(q, c): frontier(points, c, q) for q in QUALITIES for c in COSTS}
    sentences = {c: band_sentences(fronts[("kid", c)], c, name=namer(points)) for c in COSTS}
    return points, fronts, sentences
