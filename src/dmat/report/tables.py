"""The report's tables.

The summary: one row per method and size factor, mean and 95% interval over evaluations. The
interval is Student's t (n-1 degrees of freedom) on the mean; with one evaluation it is NaN (shown
"n/a"), never 0. A metric an evaluation could not compute is absent and excluded from the mean of
that metric only. The quality table: one row per evaluation, its matched-N KID and FID beside the
real-vs-real floor, each mean ± sd over the evaluation's draws (evaluation/quality.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_METRICS = ("num_parameters", "flops_per_forward", "latency_ms_per_image", "kid", "kid_floor", "fid",
                   "fid_floor", "copy_rate_pixel", "copy_rate_feature", "final_mse", "traj_mse_mean",
                   "quality_per_mparam", "quality_per_ms")
FLOOR_SPREADS = ("kid_floor_sd", "fid_floor_sd")
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
    """Rows (method, size_factor) with n, each metric's mean and `<metric>_ci95` half-width; also the mean
    over evaluations of each floor's sd over draws (`kid_floor_sd`, `fid_floor_sd`: the figures' bands)."""
    evaluations = with_efficiency(evaluations)
    rows = []
    for (method, size), group in evaluations.groupby(["method", "size_factor"], dropna=False):
        row = {"method": method, "size_factor": size, "n": len(group)}
        for metric in SUMMARY_METRICS:
            row[metric], row[f"{metric}_ci95"] = mean_ci(_get(group, metric))
        for spread in FLOOR_SPREADS:
            row[spread] = mean_ci(_get(group, spread))[0]
        rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "size_factor", "n"]
                         + [c for m in SUMMARY_METRICS for c in (m, f"{m}_ci95")] + list(FLOOR_SPREADS))
    order = table.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER))
    return table.assign(_order=order).sort_values(["_order", "size_factor"]).drop(columns="_order").reset_index(drop=True)


def _mean_sd_column(frame: pd.DataFrame, name: str) -> list[str]:
    return [_format(m, sd) for m, sd in zip(_get(frame, name), _get(frame, _sd_name(name)))]


def _sd_name(name: str) -> str:
    """kid -> kid_sd, kid_floor_train -> kid_floor_sd_train (each reference's metrics carry its suffix)."""
    for suffix in ("_train", "_heldout"):
        if name.endswith(suffix):
            return f"{name.removesuffix(suffix)}_sd{suffix}"
    return f"{name}_sd"


QUALITY_SCORES = ("kid", "kid_floor", "fid", "fid_floor", "kid_train", "kid_heldout", "fid_train", "fid_heldout")


def quality_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: N, draws and reference; KID and FID (N generated vs N real) and their floors
    (N real vs N other real) as "mean ± sd over draws"; `kid_z` = (KID - floor) / floor sd (within about 2:
    inside the floor's spread); train- and held-out-reference scores side by side; the copy rates."""
    order = _by_model(evaluations)
    shown = pd.DataFrame({"method": order.method, "size_factor": order.size_factor, "seed": order.seed,
                          "reference": order.get("reference"), "N": _plain(order, "quality_n", ".0f"),
                          "draws": _plain(order, "quality_draws", ".0f")})
    for name in QUALITY_SCORES:
        shown[name] = _mean_sd_column(order, name)
    z = (_get(order, "kid") - _get(order, "kid_floor")) / _get(order, "kid_floor_sd")
    shown.insert(shown.columns.get_loc("fid"), "kid_z", [f"{v:.1f}" if np.isfinite(v) else "n/a" for v in z])
    for name in ("copy_rate_pixel", "copy_rate_feature"):
        shown[name] = _plain(order, name, ".3f")
    return shown.reset_index(drop=True)


def _by_model(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Evaluations in the report's order: teacher, distill, scratch; larger sizes first; by seed."""
    order = evaluations.assign(_order=evaluations.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER)))
    return order.sort_values(["_order", "size_factor", "seed"], ascending=[True, False, True])


def _plain(frame: pd.DataFrame, column: str, spec: str) -> list[str]:
    return [format(v, spec) if np.isfinite(v) else "n/a" for v in _get(frame, column)]


MEMORISATION_COLUMNS = ("copy_rate_pixel", "copy_rate_feature", "nn_distance_pixel", "nn_distance_pixel_heldout",
                        "nn_distance_feature", "nn_distance_feature_heldout")


def memorisation_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: copy rates and the median nearest-training-image distance of its generated
    samples beside that of held-out real images (evaluation/memorisation.py)."""
    order = _by_model(evaluations)
    shown = pd.DataFrame({"method": order.method, "size_factor": order.size_factor, "seed": order.seed})
    for name in MEMORISATION_COLUMNS:
        shown[name] = _plain(order, name, ".3f" if name.startswith("copy") else ".4g")
    return shown.reset_index(drop=True)


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
