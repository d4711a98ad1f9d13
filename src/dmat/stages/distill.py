"""Students of any size, distilled from a teacher run (or trained from scratch as the baseline).

A student is the teacher's UNet with every width scaled by `size_factor`, under the teacher's own
noise schedule (read from the teacher's checkpoint: one schedule for the whole study). Its loss at
the same x_t and t is

    kd_weight * MSE(student eps, teacher eps) + task_weight * MSE(student eps, true noise)
      [+ feature_weight * MSE(projected student features, teacher features)]

with the teacher frozen, in eval mode, with its EMA weights. The feature term follows BK-SDM
(Kim et al. 2023): the middle block and every decoder level are matched, through a trainable 1x1
convolution where the widths differ. `method="scratch"` keeps the task term alone: the baseline
that shows, at each size, whether the teacher helps. Training itself is `model_run.train_model`.
A student below the teacher's resolution (`student_image_size`) learns from the teacher's samples
instead, on the plain DDPM loss: see dmat.stages.resolution.

`train_students` trains several sizes in one loop by default (`model_run.train_models_together`): every
student draws the same timesteps and noise on the same batches (the same seed), so the teacher's
forward pass on a batch is computed once and shared (`TeacherPass`), and each student still gets the
numbers it gets when trained alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from dmat import distributed, tracking
from dmat.config import DistillConfig, TrainConfig, flat_params
from dmat.data import DataSplits
from dmat.errors import DmatError
from dmat.model.pruning import taylor_saliency
from dmat.stages import resolution
from dmat.stages.inits import INITIALISATIONS
from dmat.stages.model_run import ModelPlan, model_params, train_model, train_models_together
from dmat.stages.resume import check_same_student, settings_key, stopped_student
from dmat.tracking import registry
from dmat.training.distillation import DistillLoss, TeacherPass
from dmat.training.loop import EpochCallback


def resolve_teacher(train: TrainConfig, teacher_run_id: str | None) -> str:
    """The teacher's run id: the one given (checked; a run id or a `models:/` URI) or the latest FINISHED one
    for this data."""
    teacher_run_id = registry.run_id_of(teacher_run_id)
    dataset, size = train.dataset, str(train.resolved_image_size())
    if not teacher_run_id:
        runs = tracking.find_runs(tracking.TEACHER, {tracking.DATASET: dataset, tracking.IMAGE_SIZE: size}, max_results=1)
        if not runs:
            raise DmatError(f"no finished teacher for dataset {dataset} at {size}px in {tracking.tracking_uri()}: "
                            f"train one first (dmat teacher --dataset {dataset} --image-size {size}) or pass --teacher-run-id")
        return runs[0].info.run_id
    run = tracking.get_run(teacher_run_id)
    tags = run.data.tags
    tracking.require_role(run, tracking.TEACHER, "give the id of a run tagged dmat.role=teacher")
    if run.info.status != "FINISHED":
        raise DmatError(f"teacher run {teacher_run_id} is {run.info.status}, not FINISHED: give a finished teacher")
    theirs = (tags.get(tracking.DATASET), tags.get(tracking.IMAGE_SIZE))
    if theirs != (dataset, size):
        raise DmatError(f"teacher {teacher_run_id} was trained on {theirs[0]} at {theirs[1]}px, not {dataset} at {size}px: "
                        f"pass --dataset {theirs[0]} --image-size {theirs[1]} or another teacher")
    return teacher_run_id


def train_student(train: TrainConfig, size_factor, teacher_run_id: str | None = None, experiment: str | None = None,
                  tags: dict[str, str] | None = None, on_epoch_end: EpochCallback | None = None,
                  resume: str | None = None, **settings) -> str:
    """Train one student as its own MLflow run and return the run id.

    `settings` are DistillConfig fields (method, kd_weight, task_weight, feature_weight, student_steps, init,
    prune_importance; student_image_size and teacher_sample_fraction: see dmat.stages.resolution). `tags` are added to
    the run's (e.g. a sweep's parent run); `on_epoch_end` is training.fit's (e.g. an Optuna pruner); `resume`
    continues that KILLED or FAILED student run. Everything is checked (settings, device, store, teacher, data)
    before the run is created.
    """
    config = DistillConfig(size_factor=size_factor, **settings).validate()
    resolution.check(config, train)
    if resume:
        check_same_student(resume, config, teacher_run_id)
    teacher = _Teacher(lambda: resolve_teacher(train, teacher_run_id))
    return train_model(train, lambda device: teacher.plan(train, config, device, tags), experiment, resume,
                       on_epoch_end)


class _Teacher:
    """The teacher of one student, or of several trained in one loop (`remember`): loaded once, its forward pass
    shared (`TeacherPass`), the pruning saliency of its weights computed once."""

    def __init__(self, run_id: Callable[[], str], remember: bool = False):
        self.run_id, self.remember = run_id, remember
        self.loaded: tracking.LoadedModel | None = None
        self.shared: TeacherPass | None = None
        self._saliency: dict[str, torch.Tensor] | None = None
        self.low_resolution = resolution.LowResolution()  # one bank of teacher samples for the loop's students

    def plan(self, train: TrainConfig, config: DistillConfig, device, tags: dict[str, str] | None) -> ModelPlan:
        """The student `config` describes, as `model_run` trains it (the teacher is loaded here, on `device`)."""
        if self.loaded is None:
            self.loaded = tracking.load_model(self.run_id(), device=device)
            self.shared = TeacherPass(self.loaded.model, self.remember)
        teacher, diffusion = self.loaded, self.loaded.diffusion
        if config.student_steps > diffusion.timesteps:
            raise DmatError(f"student-steps {config.student_steps} exceeds the teacher's {diffusion.timesteps} "
                            f"timesteps: pass --student-steps {diffusion.timesteps} or fewer")
        unet = resolution.student_unet(teacher.model.config, config)
        initial_weights = INITIALISATIONS[config.init].weights(
            teacher.model, lambda splits: self.saliency(config, train, splits))
        plan = ModelPlan(
            role=tracking.STUDENT,
            run_name=f"student-{config.size_factor:g}-{config.method}-{train.dataset}-{unet.image_size}px",
            unet=unet,
            diffusion=diffusion,
            criterion=lambda student: DistillLoss(diffusion, config, self.shared, student.feature_channels,
                                                 train.snr_gamma),
            tags={**(tags or {}), tracking.TEACHER_RUN_ID: teacher.run_id, tracking.METHOD: config.method,
                  tracking.INIT: config.init, tracking.SETTINGS_KEY: settings_key(train, config, teacher.run_id)},
            params={**model_params(train, unet, diffusion.config), **flat_params("", config.effective()),
                    "teacher_run_id": teacher.run_id},
            initial_weights=initial_weights,
        )
        return self.low_resolution.adapt(plan, teacher, train, config, device)

    def saliency(self, config: DistillConfig, train: TrainConfig, splits: DataSplits) -> dict[str, torch.Tensor] | None:
        """What ranks the teacher's channels for init=pruned: None for magnitude (pruning's default), else the
        Taylor saliency on the held-out split, under the teacher's DDPM loss."""
        if config.prune_importance == "magnitude":
            return None
        if self._saliency is None:
            self._saliency = taylor_saliency(self.loaded.model, self.loaded.diffusion, splits.val, train.batch_size,
                                             seed=train.seed)
        return self._saliency


@dataclass
class StudentOutcome:
    size_factor: float
    seconds: float
    run_id: str | None = None
    error: str | None = None


def train_students(train: TrainConfig, sizes: list[float], teacher_run_id: str | None = None,
                   experiment: str | None = None, shared_teacher: bool = True, **settings) -> list[StudentOutcome]:
    """One student per size, all against the same teacher: in one loop that shares the teacher's forward pass
    (`shared_teacher`, single process), else one after another.

    A failure at one size is recorded and the other sizes still train; Ctrl-C stops them all.
    """
    configs = [DistillConfig(size_factor=size, **settings).validate() for size in sizes]
    for config in configs:
        resolution.check(config, train)
    train.validate()
    tracking.check_tracking_reachable()
    teacher_run_id = resolve_teacher(train, teacher_run_id)
    if shared_teacher and len(sizes) > 1 and distributed.world_size() == 1:
        return _train_together(train, configs, teacher_run_id, experiment)
    outcomes = []
    progress = tqdm(sizes, desc="students", unit="size", dynamic_ncols=True)
    for size in progress:
        progress.set_postfix(size_factor=size)
        start = time.perf_counter()
        try:
            run_id = train_student(train, size, teacher_run_id, experiment, **settings)
            outcomes.append(StudentOutcome(size, time.perf_counter() - start, run_id=run_id))
        except Exception as exc:  # noqa: BLE001 - reported per size, the others still run
            outcomes.append(StudentOutcome(size, time.perf_counter() - start, error=_error(exc)))
            tqdm.write(f"size {size:g} failed: {outcomes[-1].error}")
    progress.close()
    return outcomes


def _train_together(train: TrainConfig, configs: list[DistillConfig], teacher_run_id: str,
                    experiment: str | None) -> list[StudentOutcome]:
    """Every student in one loop with one teacher pass per batch; the loop's wall time is split evenly
    between the sizes (each run's `epoch_seconds` says what its own steps took). A student with the same
    settings that stopped before it finished (a loop stopped by a signal, or lost with its Ray node and retried)
    is continued from its last.pt in its own run, not trained again."""
    teacher = _Teacher(lambda: teacher_run_id, remember=True)
    plans = [lambda device, c=c: teacher.plan(train, c, device, None) for c in configs]
    resumes = [stopped_student(settings_key(train, c, teacher_run_id), experiment) for c in configs]
    for config, run_id in zip(configs, resumes):
        if run_id:
            tqdm.write(f"size {config.size_factor:g}: continuing stopped run {run_id} from its last checkpoint")
    start = time.perf_counter()
    results = train_models_together(train, plans, experiment, lambda: teacher.shared.forget(), resumes)
    seconds = (time.perf_counter() - start) / len(configs)
    outcomes = []
    for config, result in zip(configs, results):
        failed = isinstance(result, Exception)
        outcomes.append(StudentOutcome(config.size_factor, seconds, run_id=None if failed else result,
                                       error=_error(result) if failed else None))
        if failed:
            tqdm.write(f"size {config.size_factor:g} failed: {outcomes[-1].error}")
    return outcomes


def _error(exc: Exception) -> str:
    """A size's error, with what was added on the way out (the run's status, how to resume it)."""
    return f"{type(exc).__name__}: " + "; ".join([str(exc), *getattr(exc, "__notes__", [])])
