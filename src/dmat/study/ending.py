"""What a finished pipeline says last, below its stages: the total wall time, the study's answer in one sentence,
the report as a file:// URL, and how to open the MLflow UI on the study with the filter that shows one row per
model (teacher and students, their size beside their evaluation's scores: dmat.evaluation.logged.on_model_run)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from dmat import tracking
from dmat.study.stage import PROJECT_DIR, PipelineResult
from dmat.tracking import store

UI_ADDRESS = "http://127.0.0.1:5000"  # where `make ui` serves the MLflow UI (the Makefile's HOST and PORT)
# the runs view's filter for one row per evaluated model: the tag on_model_run sets on a teacher's or student's run
# (MLflow's search has no IN for tags, and no OR)
MODELS_FILTER = f"tags.`{tracking.EVALUATION_RUN_ID}` IS NOT NULL"


def closing_lines(result: PipelineResult) -> list[str]:
    """The total time, the answer (the report run's `dmat.answer` tag; no line without one), the report (its
    `dmat.report_path` tag, as a file:// URL) and the MLflow UI's command, address and filter."""
    run_now = sum(not s.reused for s in result.stages)
    lines = [f"total time {duration(result.seconds)} ({len(result.stages)} stages: {run_now} run, "
             f"{len(result.stages) - run_now} reused)"]
    report = next((s for s in reversed(result.stages) if s.entry_point == "report" and s.run_id and not s.error), None)
    tags = tracking.get_run(report.run_id).data.tags if report else {}
    if tags.get(tracking.ANSWER):
        lines.append(f"answer: {tags[tracking.ANSWER]}")
    if tags.get(tracking.REPORT_PATH):
        lines.append(f"report: {Path(tags[tracking.REPORT_PATH]).as_uri()}")
    experiment_id = tracking.get_run(result.run_id).info.experiment_id
    return lines + [f"runs:   {ui_command()}, then open {runs_view(experiment_id)}",
                    f"        (filtered by {MODELS_FILTER}: teacher and students, one row each with their scores)"]


def duration(seconds: float) -> str:
    """1 h 02 min, 14 min 05 s, 42 s."""
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def ui_command() -> str:
    """How to open the MLflow UI on this study's store: `make ui` for the checkout's own mlflow.db (the default),
    the server itself for a tracking server, else `mlflow ui` on the store's absolute path."""
    uri = tracking.tracking_uri()
    path = store.sqlite_path(uri)
    if path is None:
        return f"the tracking server's UI ({uri})"
    if Path(path).resolve() == (PROJECT_DIR / "mlflow.db").resolve():
        return "make ui" if Path.cwd().resolve() == PROJECT_DIR else f"make -C {PROJECT_DIR} ui"
    return f"mlflow ui --backend-store-uri sqlite:///{Path(path).resolve()} --host 127.0.0.1 --port 5000"


def runs_view(experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI's model-training view (MLflow 3.17 opens its GenAI view otherwise),
    filtered to the evaluated models (checked in headless Chromium against MLflow 3.17.2)."""
    uri = tracking.tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http:", "https:")) else UI_ADDRESS
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={quote(MODELS_FILTER, safe='')}")
