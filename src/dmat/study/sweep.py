"""Optuna sweeps over distillation settings and student size.

Each trial distills one student (its MLflow run is the trial's run, nested under the study's
`dmat.role=sweep` parent run and tagged with the trial number) and evaluates it; the objective is
its FID, or (FID, parameters) for a multi-objective study whose Pareto front is logged with the
parent run. Each epoch's validation task loss (see `pruning_loss`) drives Optuna's pruner. Studies
live in Optuna's RDB storage, so the same study name resumes a study and several workers (processes
here, or machines sharing a PostgreSQL database) can work on one study; it is created once before
workers start, since concurrent first creation races on sqlite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dmat import runtime, tracking
from dmat.config import INITS, STUDENT_TRAIN, SweepConfig, with_overrides
from dmat.config.evaluation import STUDENT_STEPS
from dmat.config.study import STORAGE_ENV
from dmat.errors import DmatError
from dmat.evaluation.evaluate import evaluate_run
from dmat.stages.distill import resolve_teacher, train_student
from dmat.study import executor

STUDENT_STEP_CHOICES = (10, 20, 50)  # sampling steps a trial's student may use (at most the teacher's T)


def _without_password(url: str) -> str:
    """Logged params must not carry secrets: postgresql://user:secret@host -> postgresql://user:***@host."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# a trial whose process died (kill -9, a lost Ray node) stops renewing its heartbeat; the next worker of the study
# marks it FAIL once it is this many seconds late and runs its settings again as a new trial
TRIAL_GRACE_SECONDS = 5 * tracking.HEARTBEAT_SECONDS


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, with a lock timeout so sqlite tolerates concurrent workers, and Optuna's trial
    heartbeat: a trial left RUNNING by a dead process is failed and retried once by the next worker."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9: not the user's concern
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=tracking.HEARTBEAT_SECONDS,
                grace_period=TRIAL_GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200]
        raise DmatError(f"optuna storage {_without_password(url)} cannot be opened ({reason}): check the URL and that the database is up") from None


def check_objectives(cfg: SweepConfig, store: optuna.storages.RDBStorage) -> None:
    """Refuse to resume a study of the same name that optimises other objectives."""
    names = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    if cfg.study_name in names and [d.name.lower() for d in names[cfg.study_name].directions] != cfg.directions:
        kind = "multi-objective (FID, parameters)" if len(names[cfg.study_name].directions) == 2 else "FID-only"
        raise DmatError(f"study {cfg.study_name!r} already exists as a {kind} study: use another --study-name "
                        f"or {'add' if kind.startswith('multi') else 'drop'} --multi-objective")


def create_study(cfg: SweepConfig, store: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """Create the study (or load it to resume)."""
    store = store or storage(cfg.storage)
    check_objectives(cfg, store)
    return optuna.create_study(storage=store, study_name=cfg.study_name, directions=cfg.directions,
                               sampler=default_sampler(cfg), pruner=default_pruner(), load_if_exists=True)


def default_sampler(cfg: SweepConfig, worker: int = 0, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (NSGA-II for two objectives), seeded so a one-worker sweep is reproducible. Optuna's storage keeps
    no sampler, so the seed also mixes in the worker (workers of one study would propose the same settings)
    and the trials the study held when this process joined it (a rerun would repeat the first run's
    proposals: TPE draws its startup trials from the seed alone)."""
    seed = int(np.random.SeedSequence([cfg.seed, worker, trials_before]).generate_state(1)[0])
    return optuna.samplers.NSGAIISampler(seed=seed) if cfg.multi_objective else optuna.samplers.TPESampler(seed=seed)


def pruning_loss(metrics: dict[str, float]) -> float:
    """What the pruner compares across trials: the validation task loss, the student's epsilon MSE against
    the true noise on the held-out split. Not `val_loss`: that is each trial's own weighted sum of its kd,
    task and feature terms, whose scale moves with the trial's weights (the same student on the same batch
    gives 0.034, 1.55 or 3.53 by weights alone), so a median over trials would prune by weights, not quality."""
    return metrics["val_task_loss"]


def default_pruner() -> optuna.pruners.BasePruner:
    """The sweep's pruner. Optuna's storage keeps no pruner, so every process that runs trials builds it."""
    return optuna.pruners.MedianPruner(n_warmup_steps=2)


def parent_run(cfg: SweepConfig, experiment: str | None) -> str:
    """The study's parent MLflow run, created once and reopened when the study resumes."""
    found = tracking.find_runs(tracking.SWEEP, {tracking.STUDY_NAME: cfg.study_name}, status=None, max_results=1)
    client = MlflowClient()
    if found:
        client.update_run(found[0].info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return found[0].info.run_id
    experiment_id = mlflow.set_experiment(tracking.experiment_name(experiment)).experiment_id
    run = client.create_run(experiment_id, run_name=f"sweep-{cfg.study_name}",
                            tags={tracking.ROLE: tracking.SWEEP, tracking.STUDY_NAME: cfg.study_name, tracking.DATASET: cfg.dataset})
    for key, value in vars(cfg).items():
        client.log_param(run.info.run_id, key, tracking.encode_param(value if key != "storage" else _without_password(value)))
    return run.info.run_id


def objective(cfg: SweepConfig, parent_run_id: str, experiment: str | None):
    """The Optuna objective: distill one student with the trial's settings and return its FID (+ params)."""
    base = with_overrides(STUDENT_TRAIN, dataset=cfg.dataset, image_size=cfg.image_size, seed=cfg.seed, device=cfg.device,
                   precision=cfg.precision)
    timesteps = int(tracking.param_value(tracking.get_run(cfg.teacher_run_id).data.params, "timesteps"))
    step_choices = [s for s in STUDENT_STEP_CHOICES if s <= timesteps] or [timesteps]

    def run_trial(trial: optuna.Trial):
        size_factor = trial.suggest_float("size_factor", cfg.min_size_factor, 1.0, log=True)
        train = with_overrides(base, lr=trial.suggest_float("lr", 5e-5, 2e-3, log=True),
                        epochs=trial.suggest_int("epochs", max(1, cfg.max_epochs // 4), cfg.max_epochs))
        settings = dict(kd_weight=trial.suggest_float("kd_weight", 0.1, 2.0),
                        task_weight=trial.suggest_float("task_weight", 0.0, 2.0),
                        feature_weight=trial.suggest_float("feature_weight", 0.0, 1.0),
                        student_steps=trial.suggest_categorical("student_steps", step_choices),
                        init=trial.suggest_categorical("init", INITS))
        pruned = []

        def report(epoch: int, metrics: dict[str, float]) -> bool:
            if cfg.multi_objective:  # Optuna prunes single-objective studies only
                return False
            trial.report(pruning_loss(metrics), epoch)
            if trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        tags = {tracking.PARENT_RUN_ID: parent_run_id, tracking.STUDY_NAME: cfg.study_name, tracking.TRIAL: str(trial.number)}
        student = train_student(train, size_factor, cfg.teacher_run_id, experiment, tags=tags,
                                on_epoch_end=report, **settings)
        trial.set_user_attr("student_run_id", student)
        if pruned:
            MlflowClient().set_tag(student, tracking.STOPPED_BY_PRUNER, f"epoch {pruned[0]}")
            raise optuna.TrialPruned(f"stopped by the pruner at epoch {pruned[0]} (validation loss worse than it allows)")
        evaluation = evaluate_run(student, num_samples=cfg.num_samples, steps=STUDENT_STEPS, seed=cfg.seed,
                                  device=cfg.device, precision=cfg.precision, experiment=experiment)
        trial.set_user_attr("evaluation_run_id", evaluation)
        metrics = MlflowClient().get_run(evaluation).data.metrics
        return (metrics["fid"], metrics["num_parameters"]) if cfg.multi_objective else metrics["fid"]

    return run_trial


def work(cfg: SweepConfig, n_trials: int, parent_run_id: str, experiment: str | None,
         pruner: optuna.pruners.BasePruner | None = None, worker: int = 0) -> None:
    """Worker number `worker`: run `n_trials` trials of the existing study, pruned by `pruner`
    (default_pruner()), sampled by default_sampler(cfg, worker)."""
    url = os.environ.get(STORAGE_ENV) or cfg.storage  # a worker's: its command line shows no password
    study = optuna.load_study(study_name=cfg.study_name, storage=storage(url), pruner=pruner or default_pruner())
    study.sampler = default_sampler(cfg, worker, trials_before=len(study.trials))
    study.optimize(objective(cfg, parent_run_id, experiment), n_trials=n_trials, catch=())


def _worker_command(cfg: SweepConfig, n_trials: int, parent_run_id: str, experiment: str | None,
                    worker: int) -> list[str]:
    """`dmat sweep` for one worker process: the study's own settings, `n_trials` of its trials."""
    from dmat.config.options import to_cli_args

    shown = with_overrides(cfg, n_trials=n_trials, storage=_without_password(cfg.storage))  # the URL: STORAGE_ENV
    args = [sys.executable, "-m", "dmat", "sweep", "--worker-of", parent_run_id, "--worker-index", str(worker),
            *to_cli_args(shown, exclude=("workers", "executor", "ray_address"))]
    return args + (["--experiment", experiment] if experiment else [])


def run_worker(command: list[str], secrets: dict[str, str], env: dict[str, str]) -> int:
    """One worker process, where the executor put it (this machine or a Ray node), with its slot's threads; the
    storage URL (with its password) in its environment, not on its command line. Its exit status."""
    worker_env = {**os.environ, **env, **secrets, **runtime.watched_by_me()}
    worker_env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(command, env=worker_env).returncode


def run_sweep(cfg: SweepConfig, experiment: str | None = None,
              pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create (or resume) the study, run its trials over `workers` processes, log the outcome.

    `pruner` replaces default_pruner(); it lives in this process, so it needs workers=1.
    """
    cfg.validate()
    if pruner is not None and (cfg.workers != 1 or cfg.executor != "local"):
        raise ValueError("a pruner object cannot be handed to worker processes: pass it with workers=1")
    tracking.check_tracking_reachable()
    store = storage(cfg.storage)
    check_objectives(cfg, store)
    # one teacher for every trial and worker, fixed before the first trial
    cfg = with_overrides(cfg, teacher_run_id=resolve_teacher(
        with_overrides(STUDENT_TRAIN, dataset=cfg.dataset, image_size=cfg.image_size), cfg.teacher_run_id or None))
    study = create_study(cfg, store)
    parent = parent_run(cfg, experiment)
    with tracking.kept_alive(parent):  # `dmat runs --stale` tells a live sweep from one whose process died
        status = RunStatus.FINISHED
        try:
            if cfg.workers == 1 and cfg.executor == "local":
                work(cfg, cfg.n_trials, parent, experiment, pruner)
            else:
                _run_workers(cfg, parent, experiment)
        except KeyboardInterrupt:
            status = RunStatus.KILLED
            raise
        except BaseException:
            status = RunStatus.FAILED
            raise
        finally:
            log_outcome(study, parent)
            MlflowClient().set_terminated(parent, RunStatus.to_string(status))
    return study


def _run_workers(cfg: SweepConfig, parent_run_id: str, experiment: str | None) -> None:
    """The study's trials shared over `workers` worker processes, placed by the executor; DmatError if any failed."""
    shares = [cfg.n_trials // cfg.workers + (i < cfg.n_trials % cfg.workers) for i in range(cfg.workers)]
    commands = [_worker_command(cfg, n, parent_run_id, experiment, i) for i, n in enumerate(shares) if n]
    runner = executor.executor_for(cfg.executor, len(commands), cfg.ray_address)
    try:
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            codes = list(pool.map(lambda command: runner.run(run_worker, command, {STORAGE_ENV: cfg.storage}), commands))
    finally:
        runner.close()
    if any(codes):
        raise DmatError(f"{sum(map(bool, codes))} of {len(codes)} sweep workers failed: see their output above")


def log_outcome(study: optuna.Study, parent_run_id: str) -> None:
    """Trial table (and, multi-objective, the Pareto front) as artifacts of the sweep run."""
    client = MlflowClient()
    trials = study.trials_dataframe()
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    for state, count in states.items():
        client.log_metric(parent_run_id, f"trials_{state.lower()}", count)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    with tempfile.TemporaryDirectory() as tmp:
        trials.to_csv(Path(tmp) / "trials.csv", index=False)
        client.log_artifact(parent_run_id, str(Path(tmp) / "trials.csv"), "sweep")
        if finished and len(study.directions) == 2:
            front = Path(tmp) / "pareto_front.csv"
            rows = ["trial,fid,num_parameters,student_run_id"] + [
                f"{t.number},{t.values[0]},{t.values[1]},{t.user_attrs.get('student_run_id', '')}"
                for t in study.best_trials]
            front.write_text("\n".join(rows) + "\n")
            client.log_artifact(parent_run_id, str(front), "sweep")
        elif finished:
            client.log_metric(parent_run_id, "best_fid", study.best_value)
            client.set_tag(parent_run_id, tracking.BEST_STUDENT_RUN_ID, study.best_trial.user_attrs.get("student_run_id", ""))
