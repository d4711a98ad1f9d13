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
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dmat import registry, tracking
from dmat.config import DistillConfig, TrainConfig, flat_params
from dmat.diffusion import GaussianDiffusion
from dmat.errors import DmatError
from dmat.model_run import ModelPlan, model_params, train_model
from dmat.pruning import prune_weights
from dmat.training import EpochCallback
from dmat.unet import UNet


class DistillObjective:
    """The student's loss (a training.Objective); the 1x1 feature projections are trained with the student."""

    def __init__(self, diffusion: GaussianDiffusion, settings: DistillConfig, teacher: UNet | None = None,
                 student_channels: list[int] | None = None):
        self.diffusion, self.settings = diffusion, settings.effective()
        self.teacher = teacher.eval().requires_grad_(False) if self.settings.method == "distill" else None
        self.projections = nn.ModuleList()
        if self.teacher is not None and self.settings.feature_weight > 0:
            device = next(teacher.parameters()).device
            self.projections.extend(
                nn.Conv2d(s, t, 1, device=device) if s != t else nn.Identity()
                for s, t in zip(student_channels, teacher.feature_channels))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.projections.parameters())

    def loss(self, model, x0, generator=None):
        d, w = self.diffusion, self.settings
        t = d.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = d.q_sample(x0, t, noise)
        features = len(self.projections) > 0
        out = model(x_t, t, return_features=features)
        out, student_features = out if features else (out, [])
        eps = d.eps_from_output(out, x_t, t)
        task = F.mse_loss(eps, noise)
        total, parts = w.task_weight * task, {"task_loss": task.item()}
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(x_t, t, return_features=features)
                t_out, teacher_features = t_out if features else (t_out, [])
                teacher_eps = d.eps_from_output(t_out, x_t, t)
            kd = F.mse_loss(eps, teacher_eps)
            total = total + w.kd_weight * kd
            parts["kd_loss"] = kd.item()
            if features:
                feat = torch.stack([F.mse_loss(p(s), t_f) for p, s, t_f in
                                    zip(self.projections, student_features, teacher_features)]).mean()
                total = total + w.feature_weight * feat
                parts["feature_loss"] = feat.item()
        return total, parts


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

    `settings` are DistillConfig fields (method, kd_weight, task_weight, feature_weight,
    student_steps). `tags` are added to the run's (e.g. a sweep's parent run); `on_epoch_end` is
    training.fit's (e.g. an Optuna pruner); `resume` continues that KILLED or FAILED student run.
    Everything is checked (settings, device, store, teacher, data) before the run is created.
    """
    config = DistillConfig(size_factor=size_factor, **settings).validate()

    def plan(device) -> ModelPlan:
        teacher_id = resolve_teacher(train, teacher_run_id)
        teacher = tracking.load_model(teacher_id, device=device)
        diffusion = teacher.diffusion
        if config.student_steps > diffusion.timesteps:
            raise DmatError(f"student-steps {config.student_steps} exceeds the teacher's {diffusion.timesteps} "
                            f"timesteps: pass --student-steps {diffusion.timesteps} or fewer")
        unet = dataclasses.replace(teacher.model.config, size_factor=config.size_factor)
        return ModelPlan(
            role=tracking.STUDENT,
            run_name=f"student-{config.size_factor:g}-{config.method}-{train.dataset}-{unet.image_size}px",
            unet=unet,
            diffusion=diffusion,
            objective=lambda student: DistillObjective(diffusion, config, teacher.model, student.feature_channels),
            tags={**(tags or {}), tracking.TEACHER_RUN_ID: teacher_id, tracking.METHOD: config.method,
                  tracking.INIT: config.init},
            params={**model_params(train, unet, diffusion.config), **flat_params("", config.effective()),
                    "teacher_run_id": teacher_id},
            initial_weights=(lambda student: prune_weights(teacher.model, student)) if config.init == "pruned" else None,
        )

    return train_model(train, plan, experiment, resume, on_epoch_end)


@dataclass
class StudentOutcome:
    size_factor: float
    seconds: float
    run_id: str | None = None
    error: str | None = None


def train_students(train: TrainConfig, sizes: list[float], teacher_run_id: str | None = None,
                   experiment: str | None = None, **settings) -> list[StudentOutcome]:
    """One student per size, one after another, all against the same teacher.

    A failure at one size is recorded and the next size still runs; Ctrl-C stops the whole list.
    """
    for size in sizes:
        DistillConfig(size_factor=size, **settings).validate()
    train.validate()
    tracking.check_tracking_reachable()
    teacher_run_id = resolve_teacher(train, teacher_run_id)
    outcomes = []
    progress = tqdm(sizes, desc="students", unit="size", dynamic_ncols=True)
    for size in progress:
        progress.set_postfix(size_factor=size)
        start = time.perf_counter()
        try:
            run_id = train_student(train, size, teacher_run_id, experiment, **settings)
            outcomes.append(StudentOutcome(size, time.perf_counter() - start, run_id=run_id))
        except Exception as exc:  # noqa: BLE001 - reported per size, the others still run
            outcomes.append(StudentOutcome(size, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}"))
            tqdm.write(f"size {size:g} failed: {outcomes[-1].error}")
    progress.close()
    return outcomes
