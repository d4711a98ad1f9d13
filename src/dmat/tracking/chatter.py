"""A study's terminal, quiet unless asked otherwise: MLflow's own INFO lines off (`mlflow run` announces each stage
with a "=== Running command ..." line of 500-800 characters, a stage process notes what it logs), and a stage's own
result line ("teacher run ...", which the pipeline prints itself) not printed: in a study's terminal they break
into the progress bars and bury the result. Warnings and errors still show.

MLflow reads MLFLOW_LOGGING_LEVEL once, when it is imported: the variable reaches every process a study starts
(`mlflow run`, the stage under it), and this process's `mlflow` logger, configured already, is set directly. A
stage process sees QUIET_STAGE and sends its standard output nowhere (runtime.quiet_stage_output)."""

from __future__ import annotations

import contextlib
import logging
import os

from dmat.runtime import QUIET_STAGE

LEVEL_VARIABLE = "MLFLOW_LOGGING_LEVEL"  # MLflow's own variable (mlflow.environment_variables)
QUIET, VERBOSE = "WARNING", "INFO"


def mlflow_level(verbose: bool) -> str:
    """The level MLflow logs at: a MLFLOW_LOGGING_LEVEL the user set wins; else INFO with --verbose, WARNING without."""
    return (os.environ.get(LEVEL_VARIABLE) or (VERBOSE if verbose else QUIET)).upper()


@contextlib.contextmanager
def mlflow_chatter(verbose: bool):
    """MLflow logs at `mlflow_level(verbose)` here and in every process started inside this block, and those
    processes print nothing on standard output unless `verbose`; restored after."""
    logger = logging.getLogger("mlflow")
    saved_variables, saved_level = {k: os.environ.get(k) for k in (LEVEL_VARIABLE, QUIET_STAGE)}, logger.level
    level = mlflow_level(verbose)
    os.environ[LEVEL_VARIABLE] = level
    os.environ[QUIET_STAGE] = "0" if verbose else "1"
    logger.setLevel(level)
    try:
        yield level
    finally:
        logger.setLevel(saved_level)
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

