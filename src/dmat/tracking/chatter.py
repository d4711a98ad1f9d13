"""MLflow's own INFO lines, off unless asked for: `mlflow run` announces each stage with a "=== Running command ..."
line of 500-800 characters, and a stage process notes what it logs; in a study's terminal they break into the
progress bars and bury the result. WARNING and above still show.

MLflow reads MLFLOW_LOGGING_LEVEL once, when it is imported: the variable reaches every process a study starts
(`mlflow run`, the stage under it), and this process's `mlflow` logger, configured already, is set directly."""

from __future__ import annotations

import contextlib
import logging
import os

LEVEL_VARIABLE = "MLFLOW_LOGGING_LEVEL"  # MLflow's own variable (mlflow.environment_variables)
QUIET, VERBOSE = "WARNING", "INFO"


def mlflow_level(verbose: bool) -> str:
    """The level MLflow logs at: a MLFLOW_LOGGING_LEVEL the user set wins; else INFO with --verbose, WARNING without."""
    return (os.environ.get(LEVEL_VARIABLE) or (VERBOSE if verbose else QUIET)).upper()


@contextlib.contextmanager
def mlflow_chatter(verbose: bool):
    """MLflow logs at `mlflow_level(verbose)` here and in every process started inside this block; restored after."""
    saved_variable, logger = os.environ.get(LEVEL_VARIABLE), logging.getLogger("mlflow")
    saved_level, level = logger.level, mlflow_level(verbose)
    os.environ[LEVEL_VARIABLE] = level
    logger.setLevel(level)
    try:
        yield level
    finally:
        logger.setLevel(saved_level)
        if saved_variable is None:
            os.environ.pop(LEVEL_VARIABLE, None)
        else:
            os.environ[LEVEL_VARIABLE] = saved_variable
