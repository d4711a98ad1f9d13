"""Which evaluations are comparable, and which models are still to evaluate with given settings.

Two evaluations are comparable when every setting of SETTINGS is equal, as logged: sampling (sampler, steps,
precision: bf16 sampling moves KID by about 0.3 floor-sd), sample count, draws and seed, how the floor was
estimated (`floor_estimate`: a floor from 100 cached draws has another sd than one from the evaluation's own 10),
the semantic feature space (`features`) and the space the headline scores are in (`headline_space`). A setting an
older dmat did not log counts as what it was then (LEGACY), else as its default.
"""

from __future__ import annotations

from dmat import tracking
from dmat.config import with_overrides
from dmat.config.evaluation import STUDENT_STEPS, EvalConfig
from dmat.config.metrics import HEADLINE_SPACE, HEADLINE_SPACE_PARAM, LEGACY_SPACE
from dmat.errors import DmatError
from dmat.evaluation.floor import ESTIMATE, ESTIMATE_PARAM
from dmat.runtime import resolve_device, resolve_precision

SETTINGS = ("sampler", "steps", "num_samples", "features", "seed", "floor_draws", "precision", HEADLINE_SPACE_PARAM,
            ESTIMATE_PARAM)
# what an evaluation that did not log a setting used: fp32 sampling (before bf16), the classifier's headline, a
# floor over the evaluation's own floor_draws
LEGACY = {"precision": "fp32", HEADLINE_SPACE_PARAM: LEGACY_SPACE, ESTIMATE_PARAM: "the evaluation's floor_draws"}


def _comparable(value) -> str:
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def settings_of(params: dict) -> tuple:
    """An evaluation's settings as logged (a value resolved beside a `mlflow run -P` one wins; one not
    logged, by an older dmat, is what it was then, else its default)."""
    value = tracking.param_value

    def logged(k):
        v = value(params, k)
        return v if v is not None else LEGACY.get(k, getattr(EvalConfig, k, None))

    return tuple(_comparable(logged(k)) for k in SETTINGS)


def sampling_precision(requested: str, model_params: dict, device) -> str:
    """The precision a model is sampled at: the one asked for, and under `auto` the one it trained at (as its run
    logged it), so that a study's models are evaluated alike on any machine and an evaluation never mixes a bf16
    sample with fp32 training unasked; the hardware's choice only for a model whose run did not log its own."""
    trained = tracking.param_value(model_params, "precision")
    if requested == "auto" and trained in ("fp32", "bf16"):
        return trained
    return resolve_precision(requested, device)


def wanted_settings(cfg: EvalConfig, steps: int, model_params: dict) -> dict:
    """The settings an evaluation with `cfg` logs, for a model (its run's params) sampled with `steps` steps."""
    precision = sampling_precision(cfg.precision, model_params, resolve_device(cfg.device))
    return {**{k: getattr(cfg, k) for k in SETTINGS if hasattr(cfg, k)}, "steps": steps, "precision": precision,
            HEADLINE_SPACE_PARAM: HEADLINE_SPACE, ESTIMATE_PARAM: ESTIMATE}


def grid_of(params: dict) -> set[int]:
    """The step counts of an evaluation's steps grid (none when it had none)."""
    text = tracking.param_value(params, "steps_grid")
    return set(tracking.decode_param(text, tuple[int, ...])) if text else set()


def still_to_evaluate(config: EvalConfig | None = None, **overrides) -> list[str]:
    """The finished teacher and student runs not yet evaluated with these settings (and every step count of the
    steps grid), newest first. With steps "student" only students (a teacher has no student_steps)."""
    cfg = with_overrides(config or EvalConfig(), **overrides).validate()
    roles = (tracking.STUDENT,) if cfg.steps == STUDENT_STEPS else tracking.MODEL_ROLES
    models = [(role, run) for role in roles for run in tracking.find_runs(role)]
    if not models:
        kind = " or ".join(roles)
        raise DmatError(f"no finished {kind} run in {tracking.tracking_uri()}: nothing to evaluate; train one first "
                        "(dmat teacher, dmat distill), or point MLFLOW_TRACKING_URI at the study's store")
    done: dict[tuple, set[int]] = {}  # (model, settings) -> the step counts evaluated with them
    for r in tracking.find_runs(tracking.EVALUATION):
        key = (r.data.tags.get(tracking.MODEL_RUN_ID), settings_of(r.data.params))
        done.setdefault(key, set()).update(grid_of(r.data.params))
    todo = []
    for role, run in models:
        wanted = wanted_settings(cfg, cfg.resolved_steps(role, run.data.params), run.data.params)
        key = (run.info.run_id, settings_of(wanted))
        if key not in done or not set(cfg.steps_grid) <= done[key] | {int(wanted["steps"])}:
            todo.append(run.info.run_id)
    return todo
