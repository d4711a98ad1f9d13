"""The report's tables.

The summary: one row per model (GROUP: method, init, resolution, training budget and size factor), mean and 95%
interval over evaluations. The interval is Student's t (n-1 degrees of freedom) on the mean; with one evaluation it
is NaN (shown "n/a"), never 0. A metric an evaluation could not compute is absent and excluded from the mean of
that metric only. The quality table: one row per evaluation, its matched-N KID and FID beside the
real-vs-real floor, each mean ± sd over the evaluation's draws (evaluation/quality.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from dmat.config import metrics
from dmat.config.metrics import format_values
from dmat.config.training import RANDOM

SUMMARY_METRICS = metrics.SUMMARY


class Named(NamedTuple):
    """A model key beyond method, init and size, named in labels and tables only where the models span several (so
    that a study with one of it keeps plain labels)."""

    label: str  # a value as labels say it
    unknown: str  # the label of `missing`
    teacher_apart: bool  # whether the teacher's value counts only against other teachers' (it differs by design)
    missing: object = 0  # the value of a run or frame without the key (UNKNOWN for numbers)


# Models that differ in these are different models, never repeats: a 16 px and a 32 px student of one size (each
# evaluated against real images of its own size), and students trained for 20 and for 60 epochs (the configured,
# maximum epochs: early stopping may end sooner, which is still the same budget). The teacher normally trains
# longer than its students, which alone does not make a study of several budgets.
# Nor are models trained at another precision, or evaluations sampled at another (bf16 sampling moves KID by
# 1.4-2.4 floor-sd): `train_precision` and `sampling_precision`, named so as not to collide with the precision metric.
NAMED = {"image_size": Named("{:g}px", "unknown resolution", False),
         "epochs": Named("{:g} epochs", "unknown budget", True),
         "train_precision": Named("trained {}", "unknown training precision", False, "unknown"),
         "sampling_precision": Named("sampled {}", "unknown sampling precision", False, "unknown")}
UNKNOWN = 0  # a numeric NAMED key of a run or frame without it: one unknown resolution, one unknown budget
# a row of the size comparison: its repeats differ only in their seeds
GROUP = ["method", "init", *NAMED, "size_factor"]
KIND = GROUP[:-1]  # a model without its size: one line, fit or series over the sizes
FLOOR_SPREADS = metrics.FLOOR_SPREADS
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


def key_text(key: str, value) -> str:
    """A NAMED key's value as labels say it: "16px", "60 epochs"."""
    return NAMED[key].unknown if value == NAMED[key].missing else NAMED[key].label.format(value)


def variant(method: str, init=None, random_named: bool = False, **keys) -> str:
    """A model kind as the report names it: "distill", "distill, pruned init" for a non-random start ("distill,
    random init" with `random_named`: in a study that has both), and with the NAMED keys given (only those a study
    has several of, see namer) "distill, pruned init, 16px, 60 epochs"."""
    named = init is not None and init == init and (init != RANDOM or random_named)
    parts = [method] + ([f"{init} init"] if named else [])
    return ", ".join(parts + [key_text(key, value) for key, value in keys.items() if value is not None])


def with_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """GROUP's keys filled where a frame (an older store, a hand-made one) has none: `init` random, NAMED keys
    UNKNOWN. A value, not NaN: groupby and pivot_table drop NaN keys and == never matches them."""
    missing = pd.Series(np.nan, index=frame.index)
    # a copy first: a store's many metric columns come in as many blocks, and inserting into them fragments the
    # frame further (pandas' PerformanceWarning)
    return frame.copy().assign(init=_filled(frame.get("init", missing), RANDOM),
                               **{key: _filled(frame.get(key, missing), named.missing) for key, named in NAMED.items()})


def _filled(values: pd.Series, value) -> pd.Series:
    """NaN filled with `value`; a text value into a column of objects (pandas will not fill a float column with it)."""
    return (values.astype(object) if isinstance(value, str) and values.dtype != object else values).fillna(value)


def several(frame: pd.DataFrame, key: str) -> bool:
    """Whether `frame`'s models span more than one value of the NAMED `key`: only then do labels and tables name it.
    Where the key sets the teacher apart, its value is compared only with other teachers'."""
    keys = with_keys(frame)
    sides = keys.method == "teacher" if NAMED[key].teacher_apart else pd.Series(True, index=keys.index)
    return bool(keys[key].groupby(sides).nunique().max() > 1)  # no rows: NaN, False


def namer(frame: pd.DataFrame):
    """name(method, init, *values of the NAMED keys in their order) for the models of `frame`: variant() with the
    keys they span several of, else as plain as before (no clutter in a one-resolution, one-budget study)."""
    shown = [key for key in NAMED if several(frame, key)]
    students = with_keys(frame)
    both_inits = students[students.method != "teacher"].init.nunique() > 1

    def name(method: str, init=None, *values) -> str:
        return variant(method, init, both_inits, **{key: value for key, value in zip(NAMED, values) if key in shown})

    return name


def kind_of(row) -> tuple:
    """A row's KIND values (method, init, NAMED keys), as namer's name takes them: name(*kind_of(row))."""
    return tuple(getattr(row, key) for key in KIND)


def key_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """GROUP's columns of `frame` as a table shows them: a NAMED key only where there are several (unknown: n/a)."""
    keys = with_keys(frame)
    keys = keys[[c for c in GROUP if c not in NAMED or several(keys, c)]].copy()
    for key in NAMED.keys() & set(keys.columns):
        keys[key] = keys[key].replace(NAMED[key].missing, np.nan)
    return keys


def summary_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Rows (GROUP: method, init, image_size, epochs, size_factor) with n (evaluations), `seeds` (distinct training
    seeds), each metric's mean and `<metric>_ci95` half-width (over the evaluations, i.e. over seeds), `still_improving`
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
    return table.assign(_order=order).sort_values(["_order", "init", "image_size", "epochs", "size_factor"],
                                                  ascending=[True, True, False, True, True]).drop(
        columns="_order").reset_index(drop=True)


def _mean_sd_column(frame: pd.DataFrame, name: str) -> list[str]:
    return format_values(name, _get(frame, name), _get(frame, _sd_name(name)))


def _sd_name(name: str) -> str:
    """kid -> kid_sd, kid_floor_train -> kid_floor_sd_train (each reference's metrics carry its suffix)."""
    for suffix in (f"_{reference}" for reference in metrics.REFERENCES):
        if name.endswith(suffix):
            return f"{name.removesuffix(suffix)}_sd{suffix}"
    return f"{name}_sd"


QUALITY_SCORES = (*metrics.QUALITY, *metrics.BY_REFERENCE)  # kid, kid_floor, fid, fid_floor, kid_train, ...


def quality_table(evaluations: pd.DataFrame, formatted: bool = True) -> pd.DataFrame:
    """One row per evaluation: N, draws and reference; KID and FID (N generated vs N real) and their floors
    (N real vs N other real) as "mean ± sd over draws"; `kid_z` = (KID - floor) / floor sd (within about 2:
    inside the floor's spread); train- and held-out-reference scores side by side; the copy rates. Not `formatted`
    (the CSV): numbers, each score's sd over draws its own column (kid_sd, kid_sd_train)."""
    order = _by_model(evaluations)
    shown = key_columns(order).assign(model_seed=order.get("model_seed"), seed=order.seed,
                                      reference=order.get("reference"))
    z = (_get(order, "kid") - _get(order, "kid_floor")) / _get(order, "kid_floor_sd")
    numbers = {"N": _get(order, "quality_n"), "draws": _get(order, "quality_draws")}
    shows = {"N": _plain(order, "quality_n"), "draws": _plain(order, "quality_draws")}
    for name in QUALITY_SCORES:
        if name == "fid":  # kid_z just before the FIDs
            numbers["kid_z"], shows["kid_z"] = z, [f"{v:.1f}" if np.isfinite(v) else "n/a" for v in z]
        numbers[name], numbers[_sd_name(name)] = _get(order, name), _get(order, _sd_name(name))
        shows[name] = _mean_sd_column(order, name)
    for name in (m for m in metrics.MEMORISATION if m in metrics.SUMMARY):  # the copy rates
        numbers[name], shows[name] = _get(order, name), _plain(order, name)
    # the columns in one go: inserted one by one they fragment the frame (pandas' PerformanceWarning)
    shown = pd.concat([shown, pd.DataFrame(shows if formatted else numbers, index=shown.index)], axis=1)
    shown = shown.reset_index(drop=True)
    shown.attrs["title"] = "KID and FID of every evaluation beside the real-vs-real floor (mean ± sd over draws)"
    return shown


def _by_model(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Runs in the report's order: teacher, distill, scratch; by init; larger images, smaller budgets (epochs), then
    sizes first; by seed."""
    order = with_keys(evaluations).assign(_order=evaluations.method.map(METHOD_ORDER).fillna(len(METHOD_ORDER)))
    return order.sort_values(["_order", "init", "image_size", "epochs", "size_factor", "seed"],
                             ascending=[True, True, False, True, False, True])


def _plain(frame: pd.DataFrame, column: str) -> list[str]:
    """A column of `frame` as format_values shows it ("n/a" where absent)."""
    return format_values(column, _get(frame, column))


MEMORISATION_COLUMNS = metrics.MEMORISATION


def memorisation_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: copy rates and the median nearest-training-image distance of its generated
    samples beside that of held-out real images (evaluation/memorisation.py)."""
    order = _by_model(evaluations)
    shown = key_columns(order).assign(model_seed=order.get("model_seed"), seed=order.seed)
    # the columns in one go: inserted one by one they fragment the frame (pandas' PerformanceWarning)
    scores = pd.DataFrame({name: _plain(order, name) for name in MEMORISATION_COLUMNS}, index=shown.index)
    shown = pd.concat([shown, scores], axis=1).reset_index(drop=True)
    shown.attrs["title"] = "Copy rates and nearest-training-image distances of every evaluation"
    return shown


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
    """Display form of the summary: "mean ± ci" per metric (format_values: counts in M, alike significant figures),
    "n/a" for missing values, still improving as "k of n". A floor (kid_floor, fid_floor) that is one value in every
    row is said once in the table's caption (attrs), not repeated per row."""
    shown = key_columns(table).join(table[["n", "seeds"]])
    shown["still_improving"] = [f"{k:.0f} of {n}" if np.isfinite(k) else "unknown"
                                for k, n in zip(table.still_improving.astype(float), table.n)]
    columns, caption = {}, []
    for metric in SUMMARY_METRICS:
        values = format_values(metric, table[metric], table[f"{metric}_ci95"])
        spread = FLOOR_SD.get(metric)
        if spread and len(table) > 1 and table[metric].notna().all() and table[metric].nunique() == 1:
            sd = _get(table, spread).mean()
            caption.append(f"{metrics.metric_label(metric)} (N real vs N other real images): "
                           f"{format_values(metric, [table[metric].iloc[0]], [sd])[0]} (sd over draws) in every row")
            continue
        columns[metric] = values
    shown = pd.concat([shown, pd.DataFrame(columns, index=shown.index)], axis=1)
    shown.attrs.update(title="Every summary metric per size and method (mean ± 95% interval over evaluations)",
                       caption="; ".join(caption))
    return shown


FLOOR_SD = {"kid_floor": "kid_floor_sd", "fid_floor": "fid_floor_sd"}  # a floor and its sd over draws (FLOOR_SPREADS)


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
        shown[metric] = format_values(metric, _get(table, metric), _get(table, f"{metric}_ci95"))
    return shown


def budget_table(models: pd.DataFrame, formatted: bool = True) -> pd.DataFrame:
    """One row per finished model run: its seed, init and training budget (query.with_budget), best epoch and
    whether it was still improving when it stopped (yes / no / unknown); not `formatted` (the CSV): numbers."""
    order = _by_model(models[models.status == "FINISHED"])
    shown = key_columns(order).assign(seed=order.seed)
    for name in ("epochs_run", "best_epoch", "optimizer_steps", "train_images", "train_flops"):  # of metrics.BUDGET
        shown[name] = _plain(order, name) if formatted else _get(order, name)
    shown["still_improving"] = [{1.0: "yes", 0.0: "no"}.get(v, "unknown") for v in _get(order, "still_improving")]
    shown["run_id"] = order.run_id
    shown = shown.reset_index(drop=True)
    shown.attrs["title"] = "Training budget of every finished model run"
    return shown
