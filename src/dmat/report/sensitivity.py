"""The report's sensitivity section: for each metric, the smallest known corruption of real held-out images it
detects (outside the floor's 2 sd), from the newest sensitivity run of each data set and size
(`dmat sensitivity`, dmat.evaluation.sensitivity). It tells a reader what a score can and cannot see: a metric
that detects no noise up to sigma 0.2 calls a grainy generator as good as the data."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from dmat import tracking

NOTE = ("Real held-out images under known corruptions, scored exactly like a model (same N and draws); each cell is "
        "the smallest level a metric detects (its mean above the floor's mean + {z:g} sd), '> x' where no level "
        "up to x is. The headline (fid, kid) is in the random CNN's space, *_classifier in the classifier's.")


def sensitivity_table(table: dict) -> pd.DataFrame:
    """A logged sensitivity table (sensitivity/table.json) as metric x corruption -> smallest level detected."""
    levels, units = table["levels"], table["units"]
    rows = {metric: {f"{kind} ({units[kind]})": (f"{cells[kind]:g}" if cells.get(kind) is not None
                                                 else f"> {max(levels[kind]):g}") for kind in levels}
            for metric, cells in table["smallest"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric").reset_index()


def sensitivity_tables(experiment_ids: list[str] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table) of the newest finished sensitivity run of each data set and size in these experiments."""
    out, seen = [], set()
    for run in tracking.find_runs(tracking.SENSITIVITY, experiment_ids=experiment_ids):
        key = (run.data.tags.get(tracking.DATASET), run.data.tags.get(tracking.IMAGE_SIZE))
        if key in seen:
            continue
        seen.add(key)
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                       artifact_path=tracking.SENSITIVITY_TABLE, dst_path=tmp)
            table = json.loads(Path(path).read_text())
        caption = (f"{key[0]} at {key[1]}px, N = {table['quality_n']} a side, {table['draws']} draws "
                   f"(run {run.info.run_id[:8]}). " + NOTE.format(z=table["z_detect"]))
        out.append((caption, sensitivity_table(table)))
    return out


def add_to(section, experiment_ids: list[str] | None = None) -> None:
    """Fill a report Section (dmat.report.sections.Section) with the tables, or a note saying how to make one."""
    found = sensitivity_tables(experiment_ids)
    if not found:
        section.notes.append("n/a: no sensitivity run in this store: run `dmat sensitivity --dataset NAME`")
        return
    for caption, table in found:
        section.notes.append(caption)
        section.tables.append(table)
