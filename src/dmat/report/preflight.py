"""What a report checks and says before its tables: a folder it can write, and why a store gives empty tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dmat.errors import DmatError
from dmat.report.query import Study


def writable_folder(out: Path) -> Path:
    """The report's folder, made; or one line saying why it cannot be written, before anything is built."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DmatError(f"report folder {out} cannot be written ({exc.strerror or type(exc).__name__}): make it "
                        "writable or choose another with --out-dir") from None
    return out


def nothing_evaluated(study: Study) -> str | None:
    """When the store holds models but no finished evaluation: why the report's tables and figures are empty, and
    what to run; None otherwise."""
    if study.models.empty or not study.evaluations.empty:
        return None
    return (f"No model is evaluated yet: experiment {study.experiment} holds {len(study.models)} model run(s) but no "
            "finished evaluation run, so the tables and figures below are empty (n/a). Run `dmat evaluate --all` "
            "(or rerun the pipeline, which evaluates every model), then build the report again.")
