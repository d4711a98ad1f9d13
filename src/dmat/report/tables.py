"""The report's tables.

The summary: one row per model (GROUP: method, init, resolution and size factor), mean and 95% interval
over evaluations. The interval is Student's t (n-1 degrees of freedom) on the mean; with one evaluation it
is NaN (shown "n/a"), never 0. A metric an evaluation could not compute is absent and excluded from the mean of
that metric only. The quality table: one row per evaluation, its matched-N KID and FID beside the
real-vs-real floor, each mean ± sd over the evaluation's draws (evaluation/quality.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_METRICS = ("num_parameters", "flops_per_forward", "latency_ms_per_image", "kid", "kid_floor", "fid",
                   "fid_floor", "copy_rate_pixel", "copy_rate_feature", "final_mse", "traj_mse_mean",
                   "quality_per_mparam", "quality_per_ms", "best_epoch", "epochs_run", "optimizer_steps", "train_flops")
# a row of the size comparison: its repeats differ only in their seeds; image_size, since a 16 px and a 32 px
# student of one size are different models (each evaluated against real images at its own resolution)
GROUP = ["method", "init", "image_size", "size_factor"]
UNKNOWN_PX = 0  # the image_size of a run or frame without one: one unknown resolution
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


def px_text(image_size) -> str:
    """A resolution as labels say it: "16px"."""
    return "unknown resolution" if image_size == UNKNOWN_PX else f"{image_size:g}px"


def variant(method: str, init=None, image_size=None) -> str:
    """A model kind as the report names it: "distill", "distill, pruned init" for a non-random start, and with an
    image size (given only where a study has several, see namer) "distill, pruned init, 16px"."""
    parts = [method] + ([] if init in ("random", None) or init != init else [f"{init} init"])
    return ", ".join(parts + ([] if image_size is None else [px_text(image_size)]))


def with_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """GROUP's keys filled where a frame (an older store, a hand-made one) has none: `init` random, `image_size`
    UNKNOWN_PX. A value, not NaN: groupby and pivot_table drop NaN keys and == never matches them."""
    missing = pd.Series(np.nan, index=frame.index)
    return frame.assign(init=frame.get("init", missing).fillna("random"),
                        image_size=frame.get("image_size", missing).fillna(UNKNOWN_PX))


def several_resolutions(frame: pd.DataFrame) -> bool:
    """Whether `frame`'s models span more than one image size: only then do labels and tables name it."""
    return with_keys(frame).image_size.nunique() > 1


def namer(frame: pd.DataFrame):
    """variant() for the models of `frame`: with their resolution where they span several, else as plain as
    before (no clutter in a one-resolution study)."""
    several = several_resolutions(frame)
    return lambda method, init=None, image_size=None: variant(method, init, image_size if several else None)


def key_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """GROUP's columns of `frame` as a table shows them: image_size only where there are several (unknown: n/a)."""
    keys = with_keys(frame)
    keys = keys[[c for c in GROUP if c != "image_size" or several_resolutions(keys)]].copy()
    if "image_size" in keys.columns:
        keys["image_size"] = keys.image_size.replace(UNKNOWN_PX, np.nan)
    return keys


def summary_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Rows (GROUP: method, init, image_size, size_factor) with n (evaluations), `seeds` (distinct training seeds),
    each metric's mean and `<metric>_ci95` half-width (over the evaluations, i.e. over seeds), `still_improving`
    (how many of the models were still improving when they stopped; NaN: none says); also the mean over evaluations
    of each floor's sd over draws (`kid_floor_sd`, `fid_floor_sd`: the figures' bands)."""
    evaluations = with_efficiency(with_keys(evaluations))
    rows = []
    for keys, group in evaluations.groupby(GROUP, dropna=False):
        flags = _get(group, "still_improving").dropna()
        row = {**dict(zip(GROUP, keys)), "n": len(group),
               "seeds": group.get("model_seed", pd.Series(dtype=object)).nunique(),
               "still_improving": flags.sum() if len(flags) else np.nan}
        for metric in SUMMARY_METRICS:
            row[metric], row[f"{metric}_ci95"] = mean_ci(_get(group, metric))
        for spread in FLOOR_SPREADS:
            row[spread] = mean_ci(_get(group, spread))[0]
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*GROUP, "n", "seeds", "still_improving"]
                         + [c for m in SUMMARY_METRICS for c in (m, f"{m}_ci95")] + list(FLOOR_SPREADS))
    order = table.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER))
    return table.assign(_order=order).sort_values(["_order", "init", "image_size", "size_factor"],
                                                  ascending=[True, True, False, True]).drop(
        columns="_order").reset_index(drop=True)


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
    shown = key_columns(order).assign(model_seed=order.get("model_seed"), seed=order.seed,
                                      reference=order.get("reference"), N=_plain(order, "quality_n", ".0f"),
                                      draws=_plain(order, "quality_draws", ".0f"))
    for name in QUALITY_SCORES:
        shown[name] = _mean_sd_column(order, name)
    z = (_get(order, "kid") - _get(order, "kid_floor")) / _get(order, "kid_floor_sd")
    shown.insert(shown.columns.get_loc("fid"), "kid_z", [f"{v:.1f}" if np.isfinite(v) else "n/a" for v in z])
    for name in ("copy_rate_pixel", "copy_rate_feature"):
        shown[name] = _plain(order, name, ".3f")
    return shown.reset_index(drop=True)


def _by_model(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Runs in the report's order: teacher, distill, scratch; by init; larger images, then sizes first; by seed."""
    order = with_keys(evaluations).assign(_order=evaluations.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER)))
    return order.sort_values(["_order", "init", "image_size", "size_factor", "seed"],
                             ascending=[True, True, False, False, True])


def _plain(frame: pd.DataFrame, column: str, spec: str) -> list[str]:
    return [format(v, spec) if np.isfinite(v) else "n/a" for v in _get(frame, column)]


MEMORISATION_COLUMNS = ("copy_rate_pixel", "copy_rate_feature", "nn_distance_pixel", "nn_distance_pixel_heldout",
                        "nn_distance_feature", "nn_distance_feature_heldout")


def memorisation_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: copy rates and the median nearest-training-image distance of its generated
    samples beside that of held-out real images (evaluation/memorisation.py)."""
    order = _by_model(evaluations)
    shown = key_columns(order).assign(model_seed=order.get("model_seed"), seed=order.seed)
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
    """Display form: "mean ± ci" per metric, "n/a" for missing values, still improving as "k of n"."""
    shown = key_columns(table).join(table[["n", "seeds"]])
    shown["still_improving"] = [f"{k:.0f} of {n}" if np.isfinite(k) else "unknown"
                                for k, n in zip(table.still_improving.astype(float), table.n)]
    for metric in SUMMARY_METRICS:
        shown[metric] = [_format(m, c) for m, c in zip(table[metric], table[f"{metric}_ci95"])]
    return shown


def _format(mean: float, ci: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:,.0f}" if abs(mean) >= 1e4 else f"{mean:.4g}"  # parameter and FLOP counts in full
    return f"{text} ± {ci:.2g}" if np.isfinite(ci) else text


def mean_curves(histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean of a metric history per GROUP and step over the given runs (its seeds), with the
    half-width `ci95` of its 95% t-interval and `n` runs (one run: NaN, no band)."""
    series = histories[(histories.key == key) & histories.run_id.isin(runs.run_id)]
    merged = series.merge(with_keys(runs)[["run_id", *GROUP]], on="run_id")
    rows = [(*keys, *mean_ci(group.value), len(group)) for keys, group in merged.groupby([*GROUP, "step"])]
    return pd.DataFrame(rows, columns=[*GROUP, "step", "value", "ci95", "n"])


def per_run_means(histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per GROUP (method, init, image_size, size_factor): each run's mean of a metric history over its steps, then
    their mean and 95% interval over the runs (seeds), as columns value, ci95 and n."""
    series = histories[(histories.key == key) & histories.run_id.isin(runs.run_id)]
    per_run = series.groupby("run_id", as_index=False)["value"].mean().merge(with_keys(runs)[["run_id", *GROUP]])
    rows = [(*keys, *mean_ci(group.value), len(group)) for keys, group in per_run.groupby(GROUP)]
    return pd.DataFrame(rows, columns=[*GROUP, "value", "ci95", "n"])


def readable_subset(sizes, k: int = 6) -> list[float]:
    """At most k size factors spread evenly over the sorted sizes, smallest and largest included."""
    sizes = sorted(set(float(s) for s in sizes if np.isfinite(s)))
    if len(sizes) <= k:
        return sizes
    return [sizes[i] for i in sorted(set(np.linspace(0, len(sizes) - 1, k).round().astype(int)))]


def interval_table(table: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """The summary's rows with only `metrics`, each "mean ± 95% interval over seeds" (n/a where not logged)."""
    shown = key_columns(table).join(table[["n", "seeds"]])
    for metric in metrics:
        shown[metric] = [_format(m, c) for m, c in zip(_get(table, metric), _get(table, f"{metric}_ci95"))]
    return shown


def curve_interval_table(summary: pd.DataFrame, label: str) -> pd.DataFrame:
    """`per_run_means` output as a display table: "mean ± 95% interval over seeds" under `label`."""
    shown = key_columns(summary).join(summary[["n"]])
    shown[label] = [_format(m, c) for m, c in zip(summary.value, summary.ci95)]
    return shown


def budget_table(models: pd.DataFrame) -> pd.DataFrame:
    """One row per finished model run: its seed, init and training budget (query.with_budget), best epoch and
    whether it was still improving when it stopped (yes / no / unknown)."""
    order = _by_model(models[models.status == "FINISHED"])
    shown = key_columns(order).assign(seed=order.seed)
    for name in ("epochs_run", "best_epoch", "optimizer_steps", "train_images"):
        shown[name] = _plain(order, name, ".0f")
    shown["train_flops"] = _plain(order, "train_flops", ".3g")
    shown["still_improving"] = [{1.0: "yes", 0.0: "no"}.get(v, "unknown") for v in _get(order, "still_improving")]
    shown["run_id"] = order.run_id
    return shown.reset_index(drop=True)
