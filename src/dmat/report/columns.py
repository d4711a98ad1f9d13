"""A table's columns: their headers (the registry's "KID ↓", or an identity column's "Size"), the group each belongs to
(identity, budget, quality, cost, diagnostics, other, system) and the stable order they are shown and written in, and
which hold nothing. The HTML page (report.html) and the CSVs (report.csvs) both read them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmat.config import metrics
from dmat.config.metrics import OTHER, metric_header, metric_of

# The columns that say which model or run a row is (metrics.CATEGORIES' "identity"), in this order, and their headers.
# A table's other columns are metrics (metric_header: "KID ↓"); a column of neither keeps its name.
IDENTITY = {"run_id": "Run", "run_name": "Run name", "study_name": "Study", "trial": "Trial", "role": "Role",
            "model_role": "Model role", "method": "Method", "init": "Init", "image_size": "Resolution (px)",
            "epochs": "Epochs (max)", "train_precision": "Trained in", "sampling_precision": "Sampled in",
            "size_factor": "Size", "dataset": "Data set", "seed": "Seed", "model_seed": "Training seed",
            "n": "n", "seeds": "Seeds", "status": "Status", "problem": "Problem", "steps": "Sampling steps",
            "reference": "Reference", "N": "N", "draws": "Draws", "headline_space": "Feature space",
            "features": "Features", "teacher_run_id": "Teacher run", "model_run_id": "Model run",
            "start_time": "Started"}
BELONGS_TO = {"still_improving_tag": "still_improving"}  # a column of no metric shown beside one
SYSTEM_PREFIXES = ("system/", "autotune.", "legacy")  # MLflow's system metrics, autotuning, an older dmat's scores


def column_header(name: str) -> str:
    """A table column's header: "Size", "Training seed", "KID ↓", "Latency per image (ms) ↓", "± 95% CI"."""
    return IDENTITY.get(name) or metric_header(name)


def column_group(name: str) -> str:
    """The group of metrics.CATEGORIES a column belongs to (OTHER for a column of none; "system" for system/*,
    autotune.*, legacy* and *_legacy)."""
    if name in IDENTITY:
        return "identity"
    if name.startswith(SYSTEM_PREFIXES) or name.endswith("_legacy"):
        return "system"
    metric = metric_of(BELONGS_TO.get(name, name))
    return metric.category if metric else OTHER


_POSITION = {name: i for i, name in enumerate(metrics.METRICS)}
_GROUPS = (*metrics.CATEGORIES, OTHER, "system")


def _column_key(name: str) -> tuple:
    group = column_group(name)
    if group == "identity":
        return 0, list(IDENTITY).index(name), 0, name
    metric = metric_of(BELONGS_TO.get(name, name)) if group != "system" else None
    if metric is None:
        return _GROUPS.index(group), len(_POSITION), 0, name
    variant = 0 if name == metric.name else 1 if name == f"{metric.name}{metrics.INTERVAL_SUFFIX}" else 2
    return _GROUPS.index(group), _POSITION[metric.name], variant, name


def column_order(columns) -> list[str]:
    """Columns grouped (identity, budget, quality, cost, diagnostics, then columns of no metric, then system/*,
    autotune.* and legacy ones) and, within a group, in the registry's order, each metric's interval and variants
    (kid_ci95, kid_train) right after it: the same order whatever order a store gave them in."""
    return sorted(columns, key=_column_key)


def drop_empty(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` without the columns that hold nothing (every value NaN, None, "" or "n/a")."""
    if frame.empty:
        return frame  # no rows: every column is as empty as every other, and says what the table would hold
    return frame.drop(columns=[c for c in frame.columns if all(_nothing(v) for v in frame[c])])


def _nothing(value) -> bool:
    return value in ("", "n/a") if isinstance(value, str) else bool(np.all(pd.isna(value)))
