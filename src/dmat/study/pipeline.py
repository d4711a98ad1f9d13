"""The whole study in one command: teacher -> students -> evaluations -> report.

Each stage is an `mlflow.projects.run` of this project's own entry point (env_manager="local"),
as in mlflow/examples `multistep_workflow`: a stage whose entry point already has a FINISHED run
with the same parameters, run at the same git commit from a clean checkout (MLflow's example checks the
commit too: params alone miss changed code), is reused instead of run again, so a rerun after a crash
continues where it stopped and a rerun of a finished study trains nothing. Stage runs are nested under one
`dmat.role=pipeline` run that records which runs were reused and how long each stage took.

The students of one seed and method that are not finished yet are trained together by the `students` entry point,
in one loop that computes the teacher's output once per batch for all of them (distill.train_students). Each is
still its own run, nested under that stage's run and tagged with the `distill` stage it stands for (STAGE_KEY),
so a rerun reuses it like a student trained alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from dmat import tracking
from dmat.config import DistillConfig, PipelineConfig
from dmat.errors import DmatError
from dmat.tracking import lineage

PROJECT_DIR = Path(__file__).resolve().parents[2]
STAGE_KEY = "dmat.stage_key"  # on a run trained in a shared loop: the stage (entry point, parameters) it stands for


@dataclass
class Stage:
    entry_point: str
    label: str
    run_id: str | None = None
    reused: bool = False
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PipelineResult:
    run_id: str
    stages: list[Stage] = field(default_factory=list)

    @property
    def failed(self) -> list[Stage]:
        return [s for s in self.stages if s.error]


def find_finished(entry_point: str, parameters: dict[str, str], experiment_id: str,
                  same_code: dict[str, str] | None = None) -> str | None:
    """The newest FINISHED run of an entry point with exactly these parameter values (and `same_code` tags:
    the git commit, see lineage.Source), if any."""
    runs = tracking.find_runs(None, {tracking.ENTRY_POINT: entry_point, **(same_code or {})}, params=parameters,
                              max_results=1, experiment_ids=[experiment_id])
    if not runs:  # trained in a shared loop, standing for this stage
        runs = tracking.find_runs(None, {STAGE_KEY: stage_key(entry_point, parameters), **(same_code or {})},
                                  max_results=1, experiment_ids=[experiment_id])
    return runs[0].info.run_id if runs else None


def encoded(parameters: dict) -> dict[str, str]:
    """Stage parameters as `mlflow run -P` passes and logs them."""
    return {k: tracking.encode_param(v) for k, v in parameters.items()}


def stage_key(entry_point: str, parameters: dict[str, str]) -> str:
    """A stage's identity as one tag value: its entry point and encoded parameters, hashed."""
    text = json.dumps([entry_point, sorted(parameters.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def run_stage(stage: Stage, parameters: dict, experiment_id: str, parent_run_id: str, reuse: bool = True,
              source: lineage.Source = lineage.Source(None)) -> Stage:
    """Reuse a finished run with the same parameters and code (when `reuse`), or run the entry point now."""
    parameters = encoded(parameters)
    start = time.perf_counter()
    reuse = reuse and source.reuse_tags is not None  # uncommitted changes: no finished stage ran this code
    stage.run_id = find_finished(stage.entry_point, parameters, experiment_id, source.reuse_tags) if reuse else None
    stage.reused = stage.run_id is not None
    if not stage.reused:
        try:
            submitted = mlflow.projects.run(str(PROJECT_DIR), entry_point=stage.entry_point, parameters=parameters,
                                            experiment_id=experiment_id, env_manager="local", synchronous=True)
            stage.run_id = submitted.run_id
        except ExecutionException as exc:
            stage.error = str(exc).splitlines()[0]
        if stage.run_id is None:
            failed = tracking.find_runs(None, {tracking.ENTRY_POINT: stage.entry_point}, status=None, max_results=1,
                                        experiment_ids=[experiment_id])
            stage.run_id = failed[0].info.run_id if failed else None
        for key, value in {tracking.PARENT_RUN_ID: parent_run_id, **source.run_tags}.items() if stage.run_id else ():
            MlflowClient().set_tag(stage.run_id, key, value)
    stage.seconds = time.perf_counter() - start
    return stage


@contextlib.contextmanager
def this_python_first():
    """Stage commands run `python`: make that this interpreter, also when its venv is not activated."""
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def run_pipeline(config: PipelineConfig, experiment: str | None = None) -> PipelineResult:
    """Run (or resume) the whole study; returns the pipeline run and what each stage did.

    One teacher (trained with the first seed); then every student once per seed, size and method (the seed
    sets the student's initial weights and its data order), then one evaluation per model, then the report."""
    cfg = config.validate()
    tracking.check_tracking_reachable()
    source = lineage.Source.of(PROJECT_DIR, cfg.reuse_any_commit)  # stages are reused at this commit only
    with this_python_first(), tracking.tracked_run(f"pipeline-{cfg.dataset}", {tracking.ROLE: tracking.PIPELINE,
                                                                                tracking.DATASET: cfg.dataset},
                                                    experiment) as run:
        tracking.log_params({**{k: getattr(cfg, k) for k in (
            "dataset", "teacher_epochs", "student_epochs", "student_budget", "num_samples", "steps", "steps_grid",
            "precision", "reuse_any_commit")}, "sizes": " ".join(map(tracking.encode_param, cfg.sizes)),
            "methods": " ".join(cfg.methods), "inits": " ".join(cfg.inits), "seeds": " ".join(map(str, cfg.seeds))})
        if source.reuse_tags is None:
            tqdm.write(f"note: {PROJECT_DIR} has uncommitted changes, so no finished stage ran this code and none is "
                       "reused: commit them, or pass --reuse-any-commit")
        study = _Study(cfg, PipelineResult(run.info.run_id), run.info.experiment_id, source)
        try:
            study.run_all()
        finally:
            study.progress.close()
        reused = sum(s.reused for s in study.result.stages)
        mlflow.log_metrics({"stages": len(study.result.stages), "stages_reused": reused,
                            "stages_failed": len(study.result.failed)})
        return study.result


class _Study:
    """The stages of one pipeline run, in order, each reused or run (see `run_stage`)."""

    def __init__(self, cfg: PipelineConfig, result: PipelineResult, experiment_id: str, source: lineage.Source):
        self.cfg, self.result, self.experiment_id, self.source = cfg, result, experiment_id, source
        students = len(cfg.sizes) * len(cfg.methods) * len(cfg.inits) * len(cfg.seeds)
        self.progress = tqdm(total=2 * (1 + students) + 2, desc="pipeline", unit="stage")

    def stage(self, entry_point: str, label: str, parameters: dict, reuse: bool = True) -> Stage:
        """Run (or reuse) one stage and count it among the pipeline's stages."""
        done = self._run(entry_point, label, parameters, reuse)
        self._record(done)
        return done

    def _run(self, entry_point: str, label: str, parameters: dict, reuse: bool, note: str = "") -> Stage:
        """Run (or reuse) an entry point; its line and `seconds_<label>` metric."""
        self.progress.set_postfix_str(label)
        done = run_stage(Stage(entry_point, label), parameters, self.experiment_id, self.result.run_id, reuse,
                         self.source)
        how = "failed" if done.error else "reused" if done.reused else f"{done.seconds:.0f} s"
        tqdm.write(f"{label}: {how} (run {done.run_id}{note})")
        mlflow.log_metric(f"seconds_{label}", done.seconds)
        return done

    def _record(self, stage: Stage) -> None:
        self.result.stages.append(stage)
        self.progress.update(1)

    def students(self, method: str, init: str, seed: int, teacher_run_id: str) -> list[Stage]:
        """One `distill` stage per size; those not finished yet, when there are several, trained in one shared loop."""
        cfg = self.cfg
        suffix = ("" if init == DistillConfig.init else f"_{init}") + (f"_seed{seed}" if seed else "")
        common = {**self.common(seed), **cfg.student_training(), "method": method, "init": init,
                  "student_steps": min(DistillConfig.student_steps, cfg.timesteps), "teacher_run_id": teacher_run_id}
        stages = {size: (f"student_{method}_{tracking.encode_param(size)}{suffix}", {**common, "size_factor": size})
                  for size in cfg.sizes}
        reuse_tags = self.source.reuse_tags
        missing = [size for size, (_, params) in stages.items() if reuse_tags is None
                   or find_finished("distill", encoded(params), self.experiment_id, reuse_tags) is None]
        if len(missing) < 2:
            return [self.stage("distill", label, params) for label, params in stages.values()]
        shared = self.shared_loop(f"students_{method}{suffix}", common, {size: stages[size] for size in missing})
        return [shared[size] if size in shared else self.stage("distill", *stages[size]) for size in cfg.sizes]

    def shared_loop(self, label: str, common: dict, stages: dict[float, tuple[str, dict]]) -> dict[float, Stage]:
        """Train these students in one `students` stage; per size, the distill stage its run stands for: the run
        is nested under the loop's run, tagged with the stage's key and code, and shares the loop's wall time."""
        loop = self._run("students", label, {**common, "sizes": " ".join(map(tracking.encode_param, stages))},
                         reuse=False, note=f", {len(stages)} students in one loop")
        if loop.run_id:
            MlflowClient().set_tag(loop.run_id, tracking.RUN_NAME, label.replace("_", "-"))
        children = tracking.find_runs(tracking.STUDENT, {tracking.PARENT_RUN_ID: loop.run_id}, status=None,
                                      experiment_ids=[self.experiment_id]) if loop.run_id else []
        by_size = {float(run.data.tags[tracking.SIZE_FACTOR]): run for run in children}
        out = {}
        for size, (name, params) in stages.items():
            stage = Stage("distill", name, seconds=loop.seconds / len(stages))
            run = by_size.get(float(size))
            stage.run_id = run.info.run_id if run else loop.run_id
            if run is not None and run.info.status == "FINISHED":
                key = stage_key("distill", encoded(params))
                code = {tracking.GIT_COMMIT: self.source.commit, **self.source.run_tags} if self.source.commit else {}
                for tag, value in {STAGE_KEY: key, **code}.items():
                    MlflowClient().set_tag(stage.run_id, tag, value)
            else:
                stage.error = loop.error or f"its run ended {run.info.status if run else 'before it began'} in {label}"
            self._record(stage)
            tqdm.write(f"{name}: {'failed' if stage.error else 'trained'} in {label} (run {stage.run_id})")
            out[size] = stage
        return out

    def common(self, seed: int) -> dict:
        cfg = self.cfg
        return {"dataset": cfg.dataset, "image_size": cfg.image_size, "seed": seed, "device": cfg.device,
                "precision": cfg.precision}

    def run_all(self) -> None:
        cfg = self.cfg
        teacher = self.stage("teacher", "teacher", {**self.common(cfg.seeds[0]), "epochs": cfg.teacher_epochs,
                                                    "base_channels": cfg.base_channels, "timesteps": cfg.timesteps})
        if teacher.error:
            raise DmatError(f"the teacher stage failed ({teacher.error}): see run {teacher.run_id} in the MLflow UI")
        models = [teacher]
        for seed in cfg.seeds:
            for method in cfg.methods:
                for init in cfg.inits:
                    models += self.students(method, init, seed, teacher.run_id)
        evaluate = {"num_samples": cfg.num_samples, "steps": cfg.steps, "steps_grid": cfg.steps_grid,
                    "device": cfg.device, "precision": cfg.precision}
        for model in models:
            if model.error:
                self.progress.update(1)
                continue
            self.stage("evaluate", f"evaluate_{model.label}", {**evaluate, "run_id": model.run_id})
        # timings compared across models are taken side by side, and the report only reads the store: both are
        # done every time, to include every model
        experiment = mlflow.get_experiment(self.experiment_id).name
        self.stage("cost", "cost", {"experiment": experiment, "device": cfg.device, "precision": cfg.precision},
                   reuse=False)
        self.stage("report", "report", {"experiment": experiment}, reuse=False)
