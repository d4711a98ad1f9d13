"""Each run's description (MLflow's `mlflow.note.content`, shown atop the run page in the UI): what the run
is, the run it builds on as a link, and the `dmat` command that reproduces it, rebuilt from its params so
that it holds however the run was started (CLI, `mlflow run`, the pipeline, a notebook)."""

from __future__ import annotations

import shlex

from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.config.options import COMMANDS

COMMAND_OF = tracking.COMMAND_OF  # role -> the dmat command that reproduces its run


def link(run_id: str) -> str:
    """A markdown link to a run's page in the MLflow UI, named as the run."""
    run = tracking.get_run(run_id)
    return f"[{run.info.run_name or run_id}](#/experiments/{run.info.experiment_id}/runs/{run_id})"


def reproduce(command: str, params: dict[str, str], given: dict[str, str] | None = None) -> str:
    """`dmat COMMAND` with every option whose logged value differs from the option's default (`given`:
    values that are not params, e.g. an evaluation's --run-id)."""
    args = ["dmat", command]
    for option in COMMANDS[command].options():
        text = (given or {}).get(option.name) or tracking.param_value(params, option.name)
        if text and not _is_default(option, text):
            args += [option.flag, text]
    return shlex.join(args)


def _is_default(option, text: str) -> bool:
    try:
        return option.default is not None and tracking.decode_param(text, option.kind) == option.default
    except (ValueError, TypeError):
        return False


def describe(run_id: str) -> str:
    """Set a teacher's, student's or evaluation run's description from its tags and params; returns it."""
    run = tracking.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    role, data = tags.get(tracking.ROLE), f"`{tags.get(tracking.DATASET)}` at {tags.get(tracking.IMAGE_SIZE)}px"
    given, what = {}, f"**{role}** run on {data}."
    if role == tracking.TEACHER:
        what = f"**Teacher** DDPM (full width, size factor 1.0) trained on {data}."
    elif role == tracking.STUDENT:
        how = ", ".join(f"{k.split('.')[-1]} {tags[k]}" for k in (tracking.METHOD, tracking.INIT) if k in tags)
        what = (f"**Student** of size factor {tags.get(tracking.SIZE_FACTOR)} ({how}) on {data}, "
                f"taught by {link(tags[tracking.TEACHER_RUN_ID])}.")
    elif role == tracking.EVALUATION:
        given = {"run_id": tags[tracking.MODEL_RUN_ID]}
        what = f"**Evaluation** of {link(tags[tracking.MODEL_RUN_ID])} ({tags.get(tracking.MODEL_ROLE)}) on {data}."
    note = f"{what}\n\nReproduce: `{reproduce(COMMAND_OF[role], params, given)}`" if role in COMMAND_OF else what
    MlflowClient().set_tag(run_id, tracking.NOTE, note)
    return note


def append(run_id: str, line: str) -> None:
    """Add a paragraph to a run's description."""
    note = tracking.get_run(run_id).data.tags.get(tracking.NOTE, "")
    MlflowClient().set_tag(run_id, tracking.NOTE, f"{note}\n\n{line}".strip())
