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
    assert format_values("num_parameters", [26_000, 408_641, 45_273_088]) == ["0.026 M", "0.409 M", "45.3 M"]
    assert format_values("kid_floor", [0.05, 0.2435, -1.046e-05]) == ["0.0500", "0.243", "0.0000"]
    assert format_value("copy_p_value", 1e-9) == "1.00e-09"  # alone and tiny: no string of zeros
    for text in format_values("kid", [0.05, -1.046e-05, 0.31, 2e-7], [0.002, 0.002, math.nan, math.nan]):
        assert "e-" not in text and not text.startswith("-0.00")


def test_derived_columns_find_their_metric():
    assert metric_of("kid_sd_heldout").name == "kid_sd" and metric_of("grid_fid").name == "fid"
    assert metric_of("kid_inception").name == "kid" and metric_of("kid_randcnn_floor_sd").name == "kid_floor_sd"
    assert metric_of("fid_floor_ci95").name == "fid_floor" and metric_of("autotune.compile_s") is None
