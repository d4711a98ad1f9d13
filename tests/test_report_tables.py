"""The report's tables and CSVs from the metric registry (dmat.config.metrics): display names, units and which way
is better in every header, counts in millions, alike significant figures, wide tables behind a fold, CSV columns in
their groups (identity, budget, quality, cost, diagnostics) with no empty column and integers as integers."""

from __future__ import annotations

import math

from dmat.config import metrics
from dmat.config.metrics import format_value, format_values, metric_header, metric_of


def test_headers_carry_label_unit_and_which_way_is_better():
    assert metric_header("kid") == "KID ↓" and metric_header("fid") == "FID ↓"
    assert metric_header("precision") == "Precision ↑"
    assert metric_header("latency_ms_per_image") == "Latency per image (ms) ↓"
    assert metric_header("num_parameters") == "Parameters ↓"  # the values carry the unit: 0.409 M
    assert metric_header("epochs_run") == "Epochs run"  # a budget: neither way is better
    assert metric_header("kid_train") == "KID (train ref.) ↓"
    assert metric_header("fid_legacy") == "FID (legacy) ↓"
    assert metric_header("kid_ci95") == "± 95% CI"
    assert metric_header("system/cpu_utilization_percentage") == "system/cpu_utilization_percentage"
    for name, metric in metrics.METRICS.items():  # every metric has a label and a column group
        assert metric.label and metric.category in metrics.CATEGORIES, name


def test_values_as_a_reader_reads_them():
    assert format_value("num_parameters", 408_641) == "0.409 M"
    assert format_value("num_parameters", 45_273_088) == "45.3 M"
    assert format_value("flops_per_forward", 2.4e9) == "2.40 G"
    assert format_value("epochs_run", 12.0) == "12" and format_value("train_images", 1797.0) == "1,797"
    assert format_value("kid", 0.24351, 0.0191) == "0.244 ± 0.019"  # to the spread's two figures
    assert format_value("fid", 12.6543) == "12.7" and format_value("fid", 1234.5678) == "1,235"
    assert format_value("fid", math.nan) == "n/a" and format_value("fid", None) == "n/a"
    assert format_value("num_parameters", 510_000, 0.0) == "0.510 M"  # a count's zero spread says nothing
    # a column: one prefix, and a floor at noise level beside real KIDs is 0 at the column's precision
    assert format_values("num_parameters", [26_000, 408_641, 45_273_088]) == ["0.0260 M", "0.409 M", "45.3 M"]
    assert format_values("kid_floor", [0.05, 0.2435, -1.046e-05]) == ["0.0500", "0.243", "0.0000"]
    assert format_values("latency_ms_per_image", [4.0, 104.3, 0.51]) == ["4.00", "104", "0.510"]
    assert format_value("copy_p_value", 1e-9) == "1.00e-09"  # alone and tiny: no string of zeros
    for text in format_values("kid", [0.05, -1.046e-05, 0.31, 2e-7], [0.002, 0.002, math.nan, math.nan]):
        assert "e-" not in text and not text.startswith("-0.00")


def test_derived_columns_find_their_metric():
    assert metric_of("kid_sd_heldout").name == "kid_sd" and metric_of("grid_fid").name == "fid"
    assert metric_of("kid_inception").name == "kid" and metric_of("kid_randcnn_floor_sd").name == "kid_floor_sd"
    assert metric_of("fid_floor_ci95").name == "fid_floor" and metric_of("autotune.compile_s") is None


# --- the report's tables, page and CSVs --------------------------------------------------------------------------

import re  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmat.report.csvs import tidy_csv  # noqa: E402
from dmat.report.html import FOLD_COLUMNS, table_html  # noqa: E402
from dmat.report.columns import column_group, column_order  # noqa: E402
from dmat.report.tables import (  # noqa: E402
    budget_table,
    format_table,
    memorisation_table,
    quality_table,
    summary_table,
)


def _evaluations() -> pd.DataFrame:
    """A teacher (45.3M parameters) and students of sizes 0.1 and 0.5, two seeds each, with what a real store holds
    beside the metrics: system/*, autotune.* and legacy columns, a KID floor at noise level."""
    rows = [("teacher", 1.0, 0)] + [(m, s, seed) for m in ("distill", "scratch") for s in (0.1, 0.5) for seed in (0, 1)]
    frame = pd.DataFrame(rows, columns=["method", "size_factor", "model_seed"])
    n = len(frame)
    fid = 5 + 30 * (1 - frame.size_factor) ** 2 + frame.model_seed * 0.3
    return frame.assign(
        run_id=[f"run{i}" for i in range(n)], seed=0, init="random", image_size=16, epochs=12,
        num_parameters=np.where(frame.method == "teacher", 45_273_088, np.where(frame.size_factor == 0.1, 408_641,
                                                                               11_320_000)).astype(float),
        flops_per_forward=2.4e9 * frame.size_factor, latency_ms_per_image=4.0 + 100 * frame.size_factor,
        fid=fid, fid_sd=0.5, kid=fid / 100, kid_sd=0.004, kid_floor=-1.046e-05, kid_floor_sd=0.002, fid_floor=2.0,
        fid_floor_sd=0.2, quality_n=1000.0, quality_draws=10.0, epochs_run=12.0, best_epoch=11.0, train_images=1797.0,
        copy_rate_pixel=0.01, copy_rate_feature=0.02, copy_rate=0.05, copy_alarm=0.0,
        **{"system/cpu_utilization_percentage": 50.0, "autotune.compile_s": 3.0, "fid_legacy": np.nan,
           "legacy": False, "optimizer_steps": np.nan})


def _header_cells(markup: str) -> list[str]:
    return re.findall(r"<th[^>]*>([^<]*)</th>", markup)


def test_the_summary_table_speaks_the_registry():
    table = summary_table(_evaluations())
    markup = table_html(format_table(table))
    headers = _header_cells(markup)
    assert {"Method", "Size", "Seeds", "Parameters ↓", "FLOPs per forward ↓", "Latency per image (ms) ↓", "KID ↓",
            "FID ↓", "Copy rate (pixels) ↓", "Epochs run", "1/FID per M parameters ↑"} <= set(headers)
    assert not [h for h in headers if "_" in h]  # no raw metric name (quality_per_mparam, traj_mse_mean, kid_z)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", markup)
    assert {"45.3 M", "0.409 M", "11.3 M"} <= set(cells) and "45,273,088" not in markup and "408,641" not in markup
    assert not [c for c in cells if re.search(r"\de-\d", c)]  # no exponent anywhere
    # a floor that is one value in every row: said once under the table, not a column
    assert "KID floor ↓" not in headers and "FID floor ↓" not in headers
    assert "KID floor (N real vs N other real images): 0.0000 ± 0.0020 (sd over draws) in every row" in markup
    # wide: behind a fold that names it; a narrow table is not folded
    assert len(headers) > FOLD_COLUMNS and markup.startswith("<details><summary>Every summary metric")
    narrow = table_html(pd.DataFrame({"method": ["distill"], "kid": [0.1], "kid_ci95": [0.01]}))
    assert "<details>" not in narrow and _header_cells(narrow) == ["Method", "KID ↓"] and "0.100 ± 0.010" in narrow
    # the metric's description as the header's tooltip
    assert '<th title="KID, N generated vs N real (the headline score)">KID ↓</th>' in markup


def test_detail_tables_and_raw_tables_use_the_registry_too():
    evaluations = _evaluations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning (PerformanceWarning from inserting columns one by one, ...)
        quality, memorisation = quality_table(evaluations), memorisation_table(evaluations)
    assert {"KID ↓", "KID z vs floor", "N", "Draws"} <= set(_header_cells(table_html(quality)))
    assert quality.N.iloc[0] == "1,000" and quality.kid_floor.iloc[0] == "0.0000 ± 0.0020"
    assert "Copy rate ↓" in _header_cells(table_html(memorisation))
    models = evaluations.assign(status="FINISHED", train_flops=3 * evaluations.flops_per_forward * 1797 * 12)
    budget = budget_table(models)
    assert budget.train_images.iloc[0] == "1,797" and budget.epochs_run.iloc[0] == "12"
    assert budget.train_flops.iloc[0].endswith(" T") and "optimizer_steps" in budget  # shown n/a...
    assert "Optimizer steps" not in _header_cells(table_html(budget))  # ...but an empty column is not drawn
    # a raw numeric table (a section's frontier): numbers formatted, each interval joined to its metric
    raw = pd.DataFrame({"size_factor": [0.5], "steps": [10], "kid": [0.12345], "kid_ci95": [0.0123],
                        "flops_per_image": [2.4e7]})
    markup = table_html(raw)
    assert _header_cells(markup) == ["Size", "Sampling steps", "KID ↓", "FLOPs per image ↓"]
    assert "<td>0.123 ± 0.012</td>" in markup and "<td>24.0 M</td>" in markup


def test_csvs_group_their_columns_in_a_stable_order_without_empty_columns():
    evaluations = _evaluations()
    summary = tidy_csv(summary_table(evaluations))
    assert not [c for c in summary.columns if summary[c].isna().all()]  # the _ci95 of single runs, absent metrics
    assert "kid_ci95" in summary and not {"optimizer_steps", "optimizer_steps_ci95", "final_mse"} & set(summary)
    groups = [column_group(c) for c in summary.columns]
    assert groups == sorted(groups, key=["identity", "budget", "quality", "cost", "diagnostics"].index)
    assert list(summary.columns[:4]) == ["method", "init", "image_size", "epochs"]
    assert summary.columns.get_loc("kid_ci95") == summary.columns.get_loc("kid") + 1
    assert not [c for c in summary.columns if c.startswith(("system/", "autotune.", "legacy"))]
    assert str(summary.num_parameters.dtype) == "Int64" and str(summary.n.dtype) == "Int64"
    assert "45273088," in summary.to_csv(index=False) and "45273088.0" not in summary.to_csv(index=False)
    assert summary.kid.dtype == float  # a score stays a float
    # the raw evaluations: the same order whatever order the store gave, system/autotune/legacy columns last
    raw = tidy_csv(evaluations)
    shuffled = tidy_csv(evaluations[evaluations.columns[::-1]])
    assert list(raw.columns) == list(shuffled.columns) == column_order(evaluations.columns.drop(
        ["fid_legacy", "optimizer_steps"]))
    assert list(raw.columns[-3:]) == ["autotune.compile_s", "legacy", "system/cpu_utilization_percentage"]
    assert raw.columns[0] == "run_id" and "fid_legacy" not in raw  # empty: dropped
    order = [column_group(c) for c in raw.columns]
    assert order.index("budget") < order.index("quality") < order.index("cost") < order.index("diagnostics")


def test_a_curve_table_labelled_by_a_metric_gets_its_header():
    from dmat.report.curves import curve_interval_table

    means = pd.DataFrame({"method": ["distill"], "init": ["random"], "size_factor": [0.5], "value": [0.012345],
                          "ci95": [0.001], "n": [2]})
    shown = curve_interval_table(means, "eps_mse_true (mean over t) ± 95% CI over seeds")
    assert shown.columns[-1] == "ε MSE to the noise ↓ (mean over t) ± 95% CI over seeds"
    assert shown.iloc[0, -1] == "0.0123 ± 0.0010"
