"""Build the cross-size report: query MLflow, make tables and figures, write HTML + CSV, log a report run.

Everything is read from finished runs; nothing is re-computed or re-sampled. The HTML embeds its
PNG figures (base64), so the one file opens anywhere, including the MLflow UI's artifact viewer;
the PNGs and CSVs are written beside it too. The pieces: `query` (the study as tables), `sections` (names,
titles, inputs), `builders` (one per section, with `tables`, `figures`, `curves`, `frontier`, `scaling`,
`findings`, `speed`), `html` (the page) and `csvs` (the tables as files).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import mlflow

from dmat import tracking
from dmat.errors import DmatError
from dmat.report.builders import build_sections
from dmat.report.csvs import write_csvs, write_section_csvs
from dmat.report.html import write_html
from dmat.report.preflight import nothing_evaluated, writable_folder
from dmat.report.query import load_study
from dmat.report.sections import SECTIONS, choose_sections, gather_inputs

__all__ = ["SECTIONS", "build_report", "choose_sections"]
log = logging.getLogger(__name__)


def build_report(experiment: str | None = None, sections: tuple[str, ...] = SECTIONS, full_mse: bool = False,
                 out_dir: str | Path | None = None, log_run: bool = True) -> Path:
    """Write reports/<timestamp>/report.html (+ figures/, tables/) and log it as a dmat.role=report run.

    Returns the path of report.html. Raises DmatError before any run exists when the store cannot be
    read or the experiment has no runs.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise DmatError(f"unknown report sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    tracking.check_tracking_reachable()
    start = time.perf_counter()
    study = load_study(experiment)
    log.info("queried %d model runs and %d evaluations in %.1f s", len(study.models), len(study.evaluations),
             time.perf_counter() - start)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = writable_folder(Path(out_dir) if out_dir else Path("reports") / stamp)
    chosen = tuple(s for s in SECTIONS if s in sections)
    inputs = gather_inputs(study, chosen, full_mse)
    built = build_sections(inputs, chosen)
    if (why_empty := nothing_evaluated(study)) and built:
        log.warning(why_empty)
        built[0].notes.insert(0, why_empty)  # at the top of the page
    write_csvs(out / "tables", inputs.study)  # with the one latency the sections show
    write_section_csvs(out / "tables", built)
    report = out / "report.html"
    write_html(report, study, built)
    log.info("wrote %s in %.1f s", report, time.perf_counter() - start)
    if log_run:
        with tracking.tracked_run(f"report-{stamp}", {tracking.ROLE: tracking.REPORT}, experiment=study.experiment):
            tracking.log_params({"experiment": study.experiment, "sections": ",".join(s.key for s in built),
                                 "full_mse": full_mse})
            answer = next((s.notes[0] for s in built if s.key == "answer" and s.notes), "")
            mlflow.set_tag(tracking.ANSWER, answer)  # the pipeline prints it among its last lines
            mlflow.log_metrics({"model_runs": len(study.models), "evaluations": len(study.evaluations),
                                "problems": len(study.problems)})
            mlflow.log_artifacts(str(out), artifact_path="report")
    return report
