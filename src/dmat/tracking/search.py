"""Finding runs: by role, tags and params (values quoted), and the check that a run has the role asked for."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from dmat.errors import DmatError
from dmat.tracking.params import encode_param
from dmat.tracking.vocabulary import ROLE


def require_role(run, role: str | tuple[str, ...], hint: str = "", wanted: str | None = None) -> None:
    """One clear error when `run` is not of `role` (a role or several): "run X is a Y run, not a
    {wanted}" (`wanted` defaults to the role names)."""
    roles = (role,) if isinstance(role, str) else role
    theirs = run.data.tags.get(ROLE)
    if theirs not in roles:
        wanted = wanted or " or ".join(roles)
        raise DmatError(f"run {run.info.run_id} is a {theirs or 'non-dmat'} run, not a {wanted}" + (f": {hint}" if hint else ""))


def _quoted(value) -> str:
    """A value as an MLflow search literal: in single quotes, or double quotes when it holds a single
    quote (MLflow's filter grammar has no escapes); a value with both cannot be searched for."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' in text:
        raise DmatError(f"cannot search MLflow for a value holding both quote characters: {text!r}")
    return f'"{text}"'


def search_filter(tags: dict[str, object] | None = None, params: dict[str, object] | None = None,
                  status: str | None = None) -> str:
    """An MLflow search filter matching these tags, params (encoded as logged) and status exactly."""
    clauses = [f"tags.`{k}` = {_quoted(v)}" for k, v in (tags or {}).items()]
    clauses += [f"params.`{k}` = {_quoted(encode_param(v))}" for k, v in (params or {}).items()]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    return " and ".join(clauses)


def find_runs(role: str | None, tags: dict[str, object] | None = None, status: str | None = "FINISHED",
              max_results: int = 1000, experiment_ids: list[str] | None = None, params: dict[str, object] | None = None):
    """Runs of a role (and tags, params) in these experiments (default: all), newest first, as mlflow Runs."""
    client = MlflowClient()
    tags = {**({ROLE: role} if role else {}), **(tags or {})}
    experiments = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, search_filter(tags, params, status),
                              order_by=["attributes.start_time DESC"], max_results=max_results)
