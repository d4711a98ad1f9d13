"""The report's tables as CSV files (tables/<name>.csv): the summary, quality and budget tables, the raw
evaluations, models and problems, and the tables a section adds (Section.csvs)."""

from __future__ import annotations

from pathlib import Path

from dmat.report.query import Study
from dmat.report.sections import Section
from dmat.report.tables import budget_table, quality_table, summary_table


def write_csvs(folder: Path, study: Study) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary_table(study.evaluations).to_csv(folder / "summary.csv", index=False)
    quality_table(study.evaluations).to_csv(folder / "quality.csv", index=False)
    study.evaluations.to_csv(folder / "evaluations.csv", index=False)
    study.models.to_csv(folder / "models.csv", index=False)
    study.problems.to_csv(folder / "problems.csv", index=False)
    budget_table(study.models).to_csv(folder / "budget.csv", index=False)


def write_section_csvs(folder: Path, sections: list[Section]) -> None:
    """Each section's own tables (e.g. the frontier's points)."""
    for name, frame in ((n, f) for section in sections for n, f in section.csvs.items()):
        frame.to_csv(folder / f"{name}.csv", index=False)
