"""The whole study in one command: teacher -> students -> evaluations -> timings -> report, each stage an MLflow
run nested under one `dmat.role=pipeline` run that records which stages were reused and how long each took.
A stage with a finished run of the same parameters and code is reused (dmat.study.stage), so a rerun after a crash
continues where it stopped and a rerun of a finished study trains nothing. `--preset` chooses the study
(dmat.config.study.PRESETS: quick or full); every value it sets can be overridden by its own option.

The students of one seed and method that are not finished yet are trained together by the `students` entry point,
in one loop that computes the teacher's output once per batch for all of them (distill.train_students). Each is
still its own run, nested under that stage's run and tagged with the `distill` stage it stands for (STAGE_KEY),
so a rerun reuses it like a student trained alone; one the loop left stopped (the pipeline stopped, or the loop's
Ray node lost and its task retried) is continued from its last.pt by the next loop, in its own run.

Stages whose inputs are ready run at once (dmat.study.executor: `workers` on this machine, or Ray tasks): after
the teacher, every students loop and the teacher's evaluation; each model's evaluation once its model is trained
(and the teacher's evaluation has trained the shared feature extractor); the side-by-side timings (`cost`) alone
once everything else is done, so no other stage loads the machine while it times; then the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import mlflow
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from dmat import tracking
from dmat.config import DistillConfig, PipelineConfig
from dmat.errors import DmatError
from dmat.runtime import resolve_device, resolve_precision
from dmat.study import executor
from dmat.study.stage import (
    PROJECT_DIR,
    STAGE_KEY,
    STOPPING,
    PipelineResult,
    Stage,
    encoded,
    find_finished,
    run_stage,
    stage_key,
    stop_stages,
    stopped_training,
)
from dmat.tracking import lineage


@contextlib.contextmanager
def this_python_first():
    """Stage commands run `python`: make that this interpreter, also when its venv is not activated."""
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def run_pipeline(config: PipelineConfig, experiment: str | None = None, verbose: bool = False) -> PipelineResult:
    """Run (or resume) the whole study; returns the pipeline run, what each stage did and the wall time.

    One teacher (trained with the first seed); then every student once per seed, size, method and init (the seed
    sets the student's initial weights and its data order), then one evaluation per model, the side-by-side
    timings and the report. MLflow's INFO lines are off, here and in every stage, unless `verbose`."""
    start = time.perf_counter()
    with tracking.mlflow_chatter(verbose):
        result = _run_study(config, experiment)
    result.seconds = time.perf_counter() - start
    return result


def _run_study(config: PipelineConfig, experiment: str | None) -> PipelineResult:
    cfg = one_precision(config.validate())
    tracking.check_tracking_reachable()
    source = lineage.Source.of(PROJECT_DIR, cfg.reuse_any_commit)  # stages are reused at this commit only
    runner = executor.executor_for(cfg.executor, cfg.workers, cfg.ray_address)
    with this_python_first(), tracking.tracked_run(f"pipeline-{cfg.preset}-{cfg.dataset}",
                                                    {tracking.ROLE: tracking.PIPELINE, tracking.DATASET: cfg.dataset},
                                                    experiment) as run:
        tracking.log_params({**logged_params(cfg), "workers": runner.workers})
        tqdm.write(f"{cfg.preset} study on {cfg.dataset}: {runner.workers} stage(s) at once ({cfg.executor}), "
                   f"every model trained and sampled in {cfg.precision}")
        if source.reuse_tags is None:
            tqdm.write(f"note: {PROJECT_DIR} has uncommitted changes, so no finished stage ran this code and none is "
                       "reused: commit them, or pass --reuse-any-commit")
        STOPPING.clear()
        study = _Study(cfg, PipelineResult(run.info.run_id), run.info.experiment_id, source, runner)
        try:
            walk(study)
        except KeyboardInterrupt as exc:
            exc.add_note("the pipeline run and the stages it was running are KILLED; rerun the same command to "
                         "continue (finished stages are reused)")
            raise
        finally:
            study.progress.close()
            runner.close()
        reused = sum(s.reused for s in study.result.stages)
        mlflow.log_metrics({"stages": len(study.result.stages), "stages_reused": reused,
                            "stages_failed": len(study.result.failed)})
        return study.result


def one_precision(cfg: PipelineConfig) -> PipelineConfig:
    """The study's precision decided once, here, and passed to every stage (students, evaluations, timings):
    stages on other machines (Ray) or started at another time cannot each resolve `auto` their own way."""
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, resolve_device(cfg.device)))


def logged_params(cfg: PipelineConfig) -> dict[str, object]:
    """The preset and every value it resolved to (after the options given), as the pipeline run's params."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("workers",)}
    spaced = {name: " ".join(map(tracking.encode_param, values[name]))
              for name in ("sizes", "methods", "inits", "seeds", "ablation_sizes")}
    return {**values, **spaced}


class _Study:
    """The stages of one pipeline run and the order they wait for each other in (see the module docstring)."""

    def __init__(self, cfg: PipelineConfig, result: PipelineResult, experiment_id: str, source: lineage.Source, runner):
        self.cfg, self.result, self.experiment_id, self.source, self.runner = cfg, result, experiment_id, source, runner
        self.progress = tqdm(total=2 * (1 + cfg.num_students) + 2, desc=f"{cfg.preset} study", unit="stage")
        self._lock = threading.Lock()

    def stage(self, entry_point: str, label: str, parameters: dict, reuse: bool = True, alone: bool = False) -> Stage:
        """Run (or reuse) one stage, counted among the pipeline's; `alone`: with every thread (LocalExecutor.run)."""
        done = self._run(entry_point, label, parameters, reuse, alone=alone)
        self._record(done)
        return done

    def _run(self, entry_point: str, label: str, parameters: dict, reuse: bool, note="", alone=False) -> Stage:
        """Run (or reuse) an entry point where the executor has room; its line and `seconds_<label>` metric."""
        with tqdm(desc=f"  {label}", bar_format="{desc}: running", leave=False):  # one line per running stage
            done = self.runner.run(run_stage, Stage(entry_point, label), parameters, self.experiment_id,
                                   self.result.run_id, reuse, self.source, alone=alone)
        how = "failed" if done.error else "reused" if done.reused else f"{done.seconds:.0f} s"
        tqdm.write(f"{label}: {how} (run {done.run_id}{note})")
        MlflowClient().log_metric(self.result.run_id, f"seconds_{label}", done.seconds)
        return done

    def _record(self, stage: Stage) -> None:
        with self._lock:
            self.result.stages.append(stage)
            self.progress.update(1)
            self.progress.set_postfix_str(stage.label)

    def students(self, method: str, init: str, seed: int, teacher_run_id: str) -> list[Stage]:
        """One `distill` stage per size; those not finished yet, when there are several, trained in one shared loop."""
        cfg = self.cfg
        suffix = ("" if init == DistillConfig.init else f"_{init}") + (f"_seed{seed}" if seed else "")
        common = {**self.common(seed), **cfg.student_training(), "method": method, "init": init,
                  "student_steps": min(DistillConfig.student_steps, cfg.timesteps), "teacher_run_id": teacher_run_id}
        sizes = cfg.arm_sizes(method, init)
        stages = {size: (f"student_{method}_{tracking.encode_param(size)}{suffix}", {**common, "size_factor": size})
                  for size in sizes}
        missing = [size for size, (_, params) in stages.items() if not self._finished("distill", params)]
        if len(missing) < 2:  # the others are reused; a stopped one is continued from its last.pt
            return [self.stage("distill", label, params) for label, params in stages.values()]
        shared = self.shared_loop(f"students_{method}{suffix}", common, {size: stages[size] for size in missing})
        return [shared[size] if size in shared else self.stage("distill", *stages[size]) for size in sizes]

    def _finished(self, entry_point: str, params: dict) -> bool:
        """Whether a stage's run FINISHED with this code (tagged by a pipeline, or not: orphaned), so it is reused;
        a stopped one is not finished: a students loop continues it (distill.train_students)."""
        reuse_tags, params = self.source.reuse_tags, encoded(params)
        if reuse_tags is None:
            return False
        if find_finished(entry_point, params, self.experiment_id, reuse_tags):
            return True
        stopped = stopped_training(entry_point, params, self.experiment_id, self.source)
        return stopped is not None and stopped.info.status == "FINISHED"

    def shared_loop(self, label: str, common: dict, stages: dict[float, tuple[str, dict]]) -> dict[float, Stage]:
        """Train these students in one `students` stage; per size, the distill stage its run stands for."""
        loop = self._run("students", label, {**common, "sizes": " ".join(map(tracking.encode_param, stages))},
                         reuse=False, note=f", {len(stages)} students in one loop")
        children = tracking.find_runs(tracking.STUDENT, {tracking.LAUNCHED_BY: loop.run_id}, status=None,
                                      experiment_ids=[self.experiment_id]) if loop.run_id else []
        by_size = {float(run.data.tags[tracking.SIZE_FACTOR]): run for run in children}
        out = {}
        for size, (name, params) in stages.items():
            out[size] = self._loop_member(loop, by_size.get(float(size)), name, params, len(stages))
            tqdm.write(f"{name}: {'failed' if out[size].error else 'trained'} in {label} (run {out[size].run_id})")
        return out

    def _loop_member(self, loop: Stage, run, name: str, params: dict, members: int) -> Stage:
        """The distill stage a run of a shared loop stands for: tagged with the stage's key and code when it
        finished, so a rerun reuses it; it shares the loop's wall time."""
        stage = Stage("distill", name, seconds=loop.seconds / members)
        stage.run_id = run.info.run_id if run else loop.run_id
        if run is not None and run.info.status == "FINISHED":
            code = {tracking.GIT_COMMIT: self.source.commit, **self.source.run_tags} if self.source.commit else {}
            for tag, value in {STAGE_KEY: stage_key("distill", encoded(params)), **code}.items():
                MlflowClient().set_tag(stage.run_id, tag, value)
        else:
            stage.error = loop.error or f"its run ended {run.info.status if run else 'before it began'} in {loop.label}"
        self._record(stage)
        return stage

    def common(self, seed: int) -> dict:
        cfg = self.cfg
        return {"dataset": cfg.dataset, "image_size": cfg.image_size, "seed": seed, "device": cfg.device,
                "precision": cfg.precision, **cfg.recipe()}

    def evaluate(self, model: Stage, steps_grid: bool = True) -> Stage | None:
        """The model's evaluation; `steps_grid`: with the study's steps grid (the teacher and the main line)."""
        cfg = self.cfg
        if model.error:
            with self._lock:
                self.progress.update(1)
            return None
        return self.stage("evaluate", f"evaluate_{model.label}", {
            "num_samples": cfg.num_samples, "steps": cfg.steps, "steps_grid": cfg.steps_grid if steps_grid else (),
            "device": cfg.device,
            "precision": cfg.precision, "run_id": model.run_id})


def walk(study: _Study) -> None:
    """Teacher; then its evaluation (which trains the feature extractor every evaluation shares) beside every
    students loop; each student's evaluation once its loop is done; the timings alone; the report."""
    cfg = study.cfg
    teacher = study.stage("teacher", "teacher", {**study.common(cfg.seeds[0]), "epochs": cfg.teacher_epochs,
                                                 "base_channels": cfg.base_channels, "timesteps": cfg.timesteps},
                          alone=True)
    if teacher.error:
        raise DmatError(f"the teacher stage failed ({teacher.error}): see run {teacher.run_id} in the MLflow UI")
    groups = [(m, i, s) for s in cfg.seeds for m in cfg.methods for i in cfg.inits if cfg.arm_sizes(m, i)]
    with ThreadPoolExecutor(max_workers=len(groups) * (1 + len(cfg.sizes)) + 1) as pool:
        try:
            teacher_evaluation = pool.submit(study.evaluate, teacher)
            loops = {pool.submit(study.students, *group, teacher.run_id): group[:2] == cfg.main_line
                     for group in groups}
            teacher_evaluation.result()
            evaluations = [pool.submit(study.evaluate, model, loops[loop])
                           for loop in as_completed(loops) for model in loop.result()]
            for evaluation in evaluations:
                evaluation.result()
        except BaseException as exc:
            stop_stages(study.result.run_id if isinstance(exc, KeyboardInterrupt) else None)
            raise
    # timings compared across models are taken side by side with nothing else running, and the report only
    # reads the store: both are done every time, to include every model
    experiment = mlflow.get_experiment(study.experiment_id).name
    study.stage("cost", "cost", {"experiment": experiment, "device": cfg.device, "precision": cfg.precision},
                reuse=False, alone=True)
    study.stage("report", "report", {"experiment": experiment}, reuse=False, alone=True)
