"""The report's tables as CSV files (tables/<name>.csv): the summary, quality and budget tables, the raw
evaluations, models and problems, and the tables a section adds (Section.csvs).

Every CSV alike: columns in their groups (columns.column_order: identity, budget, quality, cost, diagnostics, then
columns of no metric, then system/*, autotune.* and legacy ones), none empty, counts that are whole written as
integers (2010000, not 2010000.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmat.config.metrics import SCALED_UNITS, WHOLE_NAMES, WHOLE_UNITS, metric_of
from dmat.report.query import Study
from dmat.report.sections import Section
from dmat.report.columns import column_order, drop_empty
from dmat.report.tables import budget_table, quality_table, summary_table

# columns of no metric that count (the summary's n and seeds, a run's resolution, budget, trial and steps)
COUNTS = ("n", "seeds", "image_size", "epochs", "trial", "steps", "N", "draws")


def write_csvs(folder: Path, study: Study) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"summary": summary_table(study.evaluations), "quality": quality_table(study.evaluations, formatted=False),
              "evaluations": study.evaluations, "models": study.models, "problems": study.problems,
              "budget": budget_table(study.models, formatted=False)}
    for name, frame in tables.items():
        write_csv(frame, folder / f"{name}.csv")


def write_section_csvs(folder: Path, sections: list[Section]) -> None:
    """Each section's own tables (e.g. the frontier's points)."""
    for name, frame in ((n, f) for section in sections for n, f in section.csvs.items()):
        write_csv(frame, folder / f"{name}.csv")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    tidy_csv(frame).to_csv(path, index=False)


def tidy_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as its CSV holds it: grouped, stable column order, no empty column, whole counts as integers."""
    frame = drop_empty(frame)
    frame = frame[column_order(frame.columns)]
    whole = {column: frame[column].astype("Int64") for column in frame.columns if _is_count(column, frame[column])}
    return frame.assign(**whole) if whole else frame


def _is_count(column: str, values: pd.Series) -> bool:
    """A column of counts (a metric in parameters, FLOPs, epochs, images, steps or draws, a 0/1 flag, or COUNTS)
    whose values are all whole numbers."""
    metric = metric_of(column)
    counts = column in COUNTS or (metric is not None and not column.endswith("_ci95") and (
        metric.unit in (*SCALED_UNITS, *WHOLE_UNITS) or metric.name in WHOLE_NAMES))
    if not counts or not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    finite = values.dropna().astype(float)
    return bool(np.isfinite(finite).all() and (finite == finite.round()).all() and (finite.abs() < 2**62).all())
