"""The summary table: one row per method and size factor, mean and 95% interval over evaluations.

The interval is Student's t (n-1 degrees of freedom) on the mean; with one evaluation it is NaN
(shown "n/a"), never 0. A metric an evaluation could not compute is absent and excluded from the
mean of that metric only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_METRICS = ("num_parameters", "flops_per_forward", "latency_ms_per_image", "fid", "kid_mean", "final_mse",
                   "traj_mse_mean", "fid_floor", "kid_floor", "quality_per_mparam", "quality_per_ms")
METHOD_ORDER = {"teacher": 0, "distill": 1, "scratch": 2}


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of the finite values (NaN where undefined)."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if v.size == 0:
        return np.nan, np.nan
    if v.size == 1:
        return float(v[0]), np.nan
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def with_efficiency(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Adds quality = 1/FID per million parameters and per millisecond of latency, per evaluation."""
    out = evaluations.copy()
    quality = 1.0 / _get(out, "fid")
    out["quality_per_mparam"] = quality / (_get(out, "num_parameters") / 1e6)
    out["quality_per_ms"] = quality / _get(out, "latency_ms_per_image")
    return out


def _get(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype(float) if column in frame.columns else pd.Series(np.nan, index=frame.index)


def summary_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Rows (method, size_factor) with n, each metric's mean and `<metric>_ci95` half-width."""
    evaluations = with_efficiency(evaluations)
    rows = []
    for (method, size), group in evaluations.groupby(["method", "size_factor"], dropna=False):
        row = {"method": method, "size_factor": size, "n": len(group)}
        for metric in SUMMARY_METRICS:
            row[metric], row[f"{metric}_ci95"] = mean_ci(_get(group, metric))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "size_factor", "n"]
                         + [c for m in SUMMARY_METRICS for c in (m, f"{m}_ci95")])
    order = table.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER))
    return table.assign(_order=order).sort_values(["_order", "size_factor"]).drop(columns="_order").reset_index(drop=True)


def pareto_mask(cost, loss) -> np.ndarray:
    """True where no other point has lower-or-equal cost and loss with one strictly lower (NaN: False)."""
    cost, loss = np.asarray(cost, dtype=float), np.asarray(loss, dtype=float)
    ok = np.isfinite(cost) & np.isfinite(loss)
    mask = np.zeros(cost.shape, dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (cost <= cost[i]) & (loss <= loss[i]) & ((cost < cost[i]) | (loss < loss[i]))
        mask[i] = not dominated.any()
    return mask


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Display form: "mean ± ci" per metric, "n/a" for missing values."""
    shown = table[["method", "size_factor", "n"]].copy()
    for metric in SUMMARY_METRICS:
        shown[metric] = [_format(m, c) for m, c in zip(table[metric], table[f"{metric}_ci95"])]
    return shown


def _format(mean: float, ci: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:,.0f}" if abs(mean) >= 1e4 else f"{mean:.4g}"  # parameter and FLOP counts in full
    return f"{text} ± {ci:.2g}" if np.isfinite(ci) else text


def mean_curves(histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean of a metric history per (method, size_factor, step) over the given runs."""
    series = histories[(histories.key == key) & histories.run_id.isin(runs.run_id)]
    merged = series.merge(runs[["run_id", "method", "size_factor"]], on="run_id")
    return merged.groupby(["method", "size_factor", "step"], as_index=False)["value"].mean()


def readable_subset(sizes, k: int = 6) -> list[float]:
    """At most k size factors spread evenly over the sorted sizes, smallest and largest included."""
    sizes = sorted(set(float(s) for s in sizes if np.isfinite(s)))
    if len(sizes) <= k:
        return sizes
    return [sizes[i] for i in sorted(set(np.linspace(0, len(sizes) - 1, k).round().astype(int)))]
