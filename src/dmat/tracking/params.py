"""Logging a run's params: values that are already logged must agree (a resumed run re-logs its config),
anything that differs is refused rather than overwritten."""

from __future__ import annotations

import mlflow
from mlflow.utils.string_utils import quote

from dmat.config.codec import encode_param


def log_params(params: dict[str, object], run_id: str | None = None) -> None:
    """Log params to the active run (or `run_id`) without clashing with values `mlflow run` already logged
    from -P arguments.

    A key already present keeps the user's value; a different resolved value (e.g. image_size 0 ->
    16) is logged beside it as `resolved.<key>`.
    """
    existing = mlflow.get_run(run_id or mlflow.active_run().info.run_id).data.params
    new = {}
    for key, value in params.items():
        text = encode_param(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text and not _same_value(existing[key], text):
            new[f"resolved.{key}"] = text
    if new:
        mlflow.log_params(new, run_id=run_id)


def _same_value(a: str, b: str) -> bool:
    """"60" and "60.0" (as `mlflow run` logs a float parameter) or "False" and "false" are one value."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


def as_stage_logs(parameters: dict[str, str]) -> dict[str, str]:
    """Encoded stage parameters as `mlflow run` stores them, shell-quoted for its command line (an empty value as
    the two characters '', one with a space as 'a b'): the text a search for the stage's run must match."""
    return {key: quote(text) for key, text in parameters.items()}
