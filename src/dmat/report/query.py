"""Reading a study back from MLflow as tidy pandas DataFrames; the report re-runs no model.

One `mlflow.search_runs` call gives every run's tags, params and latest metric values. Metric
histories cost one request per run and key, so they are fetched only for the runs a figure needs,
in parallel; artifacts are downloaded only for the few runs the denoising and PCA figures show.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.config.metrics import (
    BUDGET,
    HEADLINE_SPACE,
    HEADLINE_SPACE_PARAM,
    LEGACY,
    LEGACY_SPACE,
    REQUIRED,
    in_space,
    is_plain_score,
)
from dmat.config.training import PRUNED
from dmat.errors import DmatError

# an evaluation without these cannot be placed on the quality or cost figures
CORE_EVALUATION_METRICS = REQUIRED
# Metrics whose definition changed when FID/KID moved to matched sample sizes and the trajectory means
# left out step 0. An evaluation logged before that (it has no `quality_n`) keeps them as `<name>_legacy`,
# so that no table or figure mixes the two definitions; it is listed under problems.
CHANGED_METRICS = LEGACY
LEGACY_PROBLEM = ("evaluated by an older dmat: FID/KID not at matched sample sizes, shown n/a "
                  "(re-evaluate: dmat evaluate --run-id {model})")
# An evaluation whose headline scores are in another feature space than today's (no headline_space param: an older
# dmat's, in its `features` space) has them moved to that space's names (kid -> kid_classifier); listed under problems.
SPACE_PROBLEM = ("evaluated by an older dmat: its FID/KID are in the {space} features, not the headline's "
                 f"({HEADLINE_SPACE}), so shown only as {{space}} scores (re-evaluate: dmat evaluate --run-id {{model}})")
STATUS_PROBLEMS = {"FAILED": "failed", "KILLED": "killed", "RUNNING": "unfinished (running or crashed)",
                   "SCHEDULED": "unfinished (scheduled)"}
HISTORY_WORKERS = 16
STILL_IMPROVING_TAG = "dmat.still_improving"  # or a metric still_improving (1/0); absent: unknown
BUDGET_COLUMNS = BUDGET  # the first four as logged; still_improving also from its tag; train_flops computed
# an evaluation's from its model run: `epochs`, the configured (maximum) epochs that tell apart models of one size
# trained with different budgets (report.tables.GROUP), and what it used of them
FROM_MODEL = ("epochs", *BUDGET_COLUMNS)


@dataclass
class Study:
    """A study as tables: `models` (teacher/student runs, any status), `evaluations` (the latest
    finished evaluation per model and evaluation seed), `problems` (runs the report cannot use) and
    `sweep_trials` (students of Optuna sweeps, kept apart: their settings vary beyond size, so
    they would blur the size comparison; one row per trial with its evaluation's metrics)."""

    experiment: str
    models: pd.DataFrame
    evaluations: pd.DataFrame
    problems: pd.DataFrame
    sweep_trials: pd.DataFrame


def resolve_experiment(name: str | None):
    """The named experiment, else $MLFLOW_EXPERIMENT_NAME, else the one `mlflow run` runs in, else dmat."""
    client = MlflowClient()
    if not name and not os.environ.get("MLFLOW_EXPERIMENT_NAME") and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return client.get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"])
    name = tracking.experiment_name(name)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise DmatError(f"no experiment {name!r} in {tracking.tracking_uri()}: run the study first (make pipeline) "
                        "or pass --experiment / --tracking-uri")
    return experiment


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def _init(runs: pd.DataFrame) -> pd.Series:
    """A model's start as the report keys it: random, pruned (by weight magnitude, the default) or "pruned (taylor)":
    students pruned by another channel ranking are other models, never repeats of the magnitude-pruned ones."""
    init, importance = _column(runs, f"tags.{tracking.INIT}"), _column(runs, "params.prune_importance")
    ranked = (init == PRUNED) & importance.notna() & (importance != "magnitude")
    return init.where(~ranked, PRUNED + " (" + importance.astype(str) + ")")


def _train_precision(runs: pd.DataFrame) -> pd.Series:
    """A model run's precision as it trained: `resolved.precision`, else its `precision` where that names one."""
    given = _column(runs, "params.precision")
    return _column(runs, "params.resolved.precision").fillna(given.where(given.isin(("fp32", "bf16"))))


def _sampling_precision(runs: pd.DataFrame) -> pd.Series:
    """An evaluation's sampling precision (logged resolved); an evaluation from before it was logged sampled fp32."""
    evaluation = _column(runs, f"tags.{tracking.ROLE}") == tracking.EVALUATION
    return _column(runs, "params.precision").fillna("fp32").where(evaluation)


def tidy_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """search_runs output -> one row per run: lineage tags, a few params and every metric by its own name."""
    frame = pd.DataFrame({
        "run_id": runs["run_id"],
        "run_name": _column(runs, f"tags.{tracking.RUN_NAME}"),
        "status": runs["status"],
        "start_time": runs["start_time"],
        "role": _column(runs, f"tags.{tracking.ROLE}"),
        "method": _column(runs, f"tags.{tracking.METHOD}"),
        "init": _init(runs),
        "still_improving_tag": _column(runs, f"tags.{STILL_IMPROVING_TAG}"),
        "size_factor": pd.to_numeric(_column(runs, f"tags.{tracking.SIZE_FACTOR}"), errors="coerce"),
        "dataset": _column(runs, f"tags.{tracking.DATASET}"),
        "image_size": pd.to_numeric(_column(runs, f"tags.{tracking.IMAGE_SIZE}"), errors="coerce"),
        "teacher_run_id": _column(runs, f"tags.{tracking.TEACHER_RUN_ID}"),
        "model_run_id": _column(runs, f"tags.{tracking.MODEL_RUN_ID}"),
        "model_role": _column(runs, f"tags.{tracking.MODEL_ROLE}"),
        "missing_classes": _column(runs, f"tags.{tracking.MISSING_CLASSES}"),
        "seed": _column(runs, "params.seed"),
        # an evaluation's sampling steps (a resolved --steps student is logged beside the user's "student")
        "steps": pd.to_numeric(_column(runs, "params.resolved.steps").fillna(_column(runs, "params.steps")),
                               errors="coerce"),
        "reference": _column(runs, "params.reference"),
        "headline_space": _column(runs, f"params.{HEADLINE_SPACE_PARAM}"),
        "features": _column(runs, "params.features"),
        "epochs": pd.to_numeric(_column(runs, "params.epochs"), errors="coerce"),  # a model's configured budget
        "train_precision": _train_precision(runs),
        "sampling_precision": _sampling_precision(runs),
        "study_name": _column(runs, f"tags.{tracking.STUDY_NAME}"),
        "trial": pd.to_numeric(_column(runs, f"tags.{tracking.TRIAL}"), errors="coerce"),
    })
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]]
    metrics = metrics.rename(columns=lambda c: c.removeprefix("metrics."))
    return pd.concat([frame, metrics.astype(float)], axis=1).reset_index(drop=True)


def load_study(experiment: str | None = None) -> Study:
    """Every teacher, student and evaluation run of an experiment, plus the list of problem runs."""
    exp = resolve_experiment(experiment)
    runs = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    runs = tidy_runs(runs) if not runs.empty else runs
    if runs.empty or not runs.role.isin((*tracking.MODEL_ROLES, tracking.EVALUATION)).any():
        raise DmatError(f"experiment {exp.name!r} has no teacher, student or evaluation runs: train and evaluate "
                        "models first (make teacher students evaluate)")
    all_models = runs[runs.role.isin(tracking.MODEL_ROLES)]
    in_sweep = all_models.study_name.notna()
    models, trials = all_models[~in_sweep].reset_index(drop=True), all_models[in_sweep]
    all_evals = runs[runs.role == tracking.EVALUATION]
    finished = all_evals[all_evals.status == "FINISHED"]
    # newest first, so a re-evaluation with the same seed and sampling precision replaces the older one
    latest = finished.drop_duplicates(["model_run_id", "seed", "sampling_precision"], keep="first")
    latest = set_space_apart(set_legacy_apart(latest.assign(method=latest.method.fillna(latest.model_role))))
    of_trials = latest.model_run_id.isin(trials.run_id)
    models = with_budget(models)
    evaluations = with_model(latest[~of_trials].reset_index(drop=True), models)
    # a trial stopped early by the sweep's pruner is finished without an evaluation by design; a failed one is still a
    # problem
    # a run that died before dmat could tag it (e.g. a broken environment under `mlflow run`) has no role
    # (not the report's own run under `mlflow run`, which is RUNNING and untagged while it reads the store)
    untagged = runs[runs.role.isna() & runs.status.isin(STATUS_PROBLEMS) & (runs.run_id != os.environ.get("MLFLOW_RUN_ID"))]
    problems = find_problems(pd.concat([models, trials[trials.status != "FINISHED"], untagged]), all_evals, latest)
    return Study(exp.name, models, evaluations, problems, sweep_trials(trials, latest[of_trials]))


def with_budget(models: pd.DataFrame) -> pd.DataFrame:
    """Model runs with `init` (random where untagged: the only init before --init existed) and their training
    budget: best_epoch, epochs_run, optimizer_steps and train_images as logged (NaN where not), `still_improving`
    (1/0 from its metric or tag, NaN: unknown) and `train_flops` ~ 3 x flops_per_forward x train_images x
    epochs_run (forward plus backward, about twice the forward; a distilled student's teacher passes not counted)."""
    out = models.assign(init=models.init.fillna("random"))
    for name in BUDGET_COLUMNS[:4]:
        out[name] = pd.to_numeric(out[name], errors="coerce") if name in out.columns else np.nan
    tag = out.still_improving_tag.map(lambda v: {"true": 1.0, "1": 1.0, "false": 0.0, "0": 0.0}.get(str(v).lower()))
    metric = out["still_improving"] if "still_improving" in out.columns else pd.Series(np.nan, index=out.index)
    out["still_improving"] = metric.astype(float).fillna(tag.astype(float))
    flops = out["flops_per_forward"] if "flops_per_forward" in out.columns else np.nan
    out["train_flops"] = 3 * flops * out.train_images * out.epochs_run
    return out


def with_model(evaluations: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Evaluations with their model's training seed (`model_seed`: what separates repeated runs of one size and
    method), init (the model's, see _init), training precision and budget (FROM_MODEL, never an evaluation's own); an
    evaluation's own `seed` is its sampling seed."""
    info = models.reindex(columns=["run_id", "seed", "init", "train_precision", *FROM_MODEL]).rename(
        columns={"run_id": "model_run_id", "seed": "model_seed", "init": "model_init"})
    own = [c for c in ("train_precision", *FROM_MODEL) if c in evaluations.columns]
    out = evaluations.drop(columns=own).merge(
        info, on="model_run_id", how="left")
    out["init"] = out.model_init.fillna(out.init).fillna("random")  # the model's: it knows its pruning ranking
    return out.drop(columns="model_init")


def set_legacy_apart(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Evaluations without `quality_n` (older dmat): CHANGED_METRICS moved to `<name>_legacy`, flag `legacy`."""
    legacy = (evaluations["quality_n"].isna() if "quality_n" in evaluations.columns
              else pd.Series(True, index=evaluations.index))
    out = evaluations.assign(legacy=legacy)
    for name in CHANGED_METRICS:
        if name in out.columns:
            out[f"{name}_legacy"] = out[name].where(legacy)
            out[name] = out[name].mask(legacy)
    return out


def set_space_apart(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Evaluations whose headline scores are in another space than HEADLINE_SPACE (without the headline_space param:
    in their `features` space, LEGACY_SPACE where not logged): their plain scores (kid, fid_floor_sd_heldout, ...)
    moved to that space's names (kid -> kid_classifier, where not logged there too), so that no table or figure
    shows them beside today's headline; `legacy_space` names that space (None: the headline's)."""
    logged = evaluations.reindex(columns=["headline_space", "features"])
    space = logged.headline_space.fillna(logged.features.fillna(LEGACY_SPACE))
    other = space != HEADLINE_SPACE
    out = evaluations.assign(legacy_space=space.where(other, None))
    plain = [c for c in out.columns if is_plain_score(c)]
    for name in space[other].unique():
        rows = other & (space == name)
        for column in plain:
            moved = in_space(column, name)
            out[moved] = (out[moved] if moved in out else pd.Series(np.nan, index=out.index)).astype(float)
            out.loc[rows, moved] = out.loc[rows, moved].fillna(out.loc[rows, column])
    out[plain] = out[plain].mask(other, axis=0)
    return out


def sweep_trials(trials: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep trial: study, trial number, size factor, status and its evaluation's metrics."""
    columns = ["study_name", "trial", "run_id", "status", "size_factor"]
    # reindex: a store without a single evaluation has no fid column at all
    metrics = evaluations.drop_duplicates("model_run_id").reindex(columns=["model_run_id", "fid", "kid", "num_parameters"])
    table = trials[columns].merge(metrics, how="left", left_on="run_id", right_on="model_run_id")
    return table.drop(columns="model_run_id").sort_values(["study_name", "trial"]).reset_index(drop=True)


def find_problems(models: pd.DataFrame, all_evals: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """Runs that are failed, unfinished, not evaluated or evaluated without a core metric."""
    columns = ["run_id", "run_name", "role", "method", "size_factor", "status", "problem"]
    rows = []
    for _, run in pd.concat([models, all_evals]).iterrows():
        if run.status in STATUS_PROBLEMS:
            before = "" if isinstance(run.role, str) else " before dmat started (no dmat.role tag)"
            rows.append({**run, "problem": STATUS_PROBLEMS[run.status] + before})
    evaluated = set(evaluations.model_run_id)
    for _, run in models[(models.status == "FINISHED") & ~models.run_id.isin(evaluated)].iterrows():
        rows.append({**run, "problem": "not evaluated"})
    for _, run in evaluations.iterrows():
        missing = [m for m in CORE_EVALUATION_METRICS if pd.isna(run.get(m, np.nan))]
        if run.get("legacy", False):
            rows.append({**run, "problem": LEGACY_PROBLEM.format(model=run.model_run_id)})
        elif isinstance(run.get("legacy_space"), str):
            rows.append({**run, "problem": SPACE_PROBLEM.format(space=run.legacy_space, model=run.model_run_id)})
        elif missing:
            rows.append({**run, "problem": "incomplete evaluation: no " + ", ".join(missing)})
    return pd.DataFrame(rows, columns=columns)


def metric_histories(run_ids, keys, workers: int = HISTORY_WORKERS) -> pd.DataFrame:
    """Histories of `keys` for `run_ids` as rows (run_id, key, step, value), fetched in parallel.

    A step logged twice keeps its latest value; a run without the key contributes no rows.
    """
    client = MlflowClient()
    jobs = [(run_id, key) for run_id in dict.fromkeys(run_ids) for key in keys]

    def fetch(job):
        run_id, key = job
        return [(run_id, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        rows = [row for result in pool.map(fetch, jobs) for row in result]
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    frame = frame.sort_values("timestamp").drop_duplicates(["run_id", "key", "step"], keep="last")
    return frame.drop(columns="timestamp").sort_values(["run_id", "key", "step"]).reset_index(drop=True)


def load_npz(run_id: str, artifact_path: str) -> dict[str, np.ndarray] | None:
    """Arrays of an .npz artifact, or None when the run did not log it."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (MlflowException, OSError):
            return None
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
