"""How a run trains (`TrainConfig`) and how a student learns from its teacher (`DistillConfig`).

What the network looks like is `UNetConfig` (model.unet) and what the noise process is, `DiffusionConfig`
(model.diffusion). `validate` turns bad values into one clear error before anything is written to MLflow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dmat.config.datasets import absolute_dataset, preset_for
from dmat.errors import DmatError
from dmat.model.diffusion import SAMPLERS
from dmat.runtime import check_compile, check_precision

# The prototype's student sizes; `make students` trains these unless SIZES overrides them.
DEFAULT_SIZE_FACTORS: tuple[float, ...] = (0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
MIN_SIZE_FACTOR, MAX_SIZE_FACTOR = 0.01, 1.0


@dataclass
class TrainConfig:
    """How one model (teacher or student) is trained. Defaults suit the bundled digits on a CPU."""

    dataset: str = "digits"
    image_size: int = 0  # 0: the data set's native size (DATASET_PRESETS)
    batch_size: int = 64
    epochs: int = 60
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    val_fraction: float = 0.1
    split_seed: int = 0  # fixed, so every model of a study is validated on the same held-out images
    seed: int = 0
    early_stopping_patience: int = 10
    # issue 28's levers, off by default (today's recipe): dmat.training.losses, .schedule, .best
    snr_gamma: float = 0.0  # min-SNR-gamma timestep weighting of the training loss (5 in Hang et al.); 0: uniform
    lr_schedule: str = "constant"  # "constant" or "cosine": decay to lr_floor x lr over `epochs`
    lr_warmup_epochs: int = 0  # linear warm-up of the lr over these first epochs
    lr_floor: float = 0.1  # where the cosine ends, as a share of the peak lr
    lr_width_scaling: bool = False  # a student's lr x (teacher base channels / its own)^0.5 (EDM2)
    stop_when_converged: bool = False  # also stop when the slope test finds the validation loss converged
    save_interval: int = 5
    device: str = "auto"
    precision: str = "auto"  # "fp32", "bf16" (autocast), or "auto": by the hardware (runtime.resolve_precision)
    compile: str = "auto"  # torch.compile the training step: "on", "off", or "auto": measured where it may pay (CUDA)
    num_workers: int = 0
    # sampling used for the sample grid logged at the end of training (at most the model's timesteps)
    sample_steps: int = 50
    sampler: str = "ddim"
    num_sample_images: int = 64

    @property
    def channels(self) -> int:
        return preset_for(self.dataset).channels

    def resolved_image_size(self) -> int:
        return self.image_size or preset_for(self.dataset).image_size

    def validate(self) -> "TrainConfig":
        preset_for(self.dataset)
        self.dataset = absolute_dataset(self.dataset)  # logged as the folder read, wherever the next command runs
        positive = ("epochs", "batch_size", "save_interval", "sample_steps", "num_sample_images")
        for name in positive:
            if getattr(self, name) <= 0:
                raise DmatError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.early_stopping_patience < 0:
            raise DmatError("early-stopping-patience must be >= 0 (0 turns early stopping off)")
        if not 0.0 < self.lr < 1.0:
            raise DmatError(f"lr must be in (0, 1), got {self.lr}")
        if not 0.0 < self.val_fraction < 0.5:
            raise DmatError(f"val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise DmatError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.image_size < 0:
            raise DmatError(f"image-size must be positive, got {self.image_size}")
        if self.sampler not in SAMPLERS:
            raise DmatError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check_precision(self.precision), check_compile(self.compile)
        self._validate_recipe()
        for name in ("weight_decay", "grad_clip", "num_workers"):
            if not getattr(self, name) >= 0:
                raise DmatError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                                + (" (0 turns clipping off)" if name == "grad_clip" else ""))
        return self

    def _validate_recipe(self) -> None:
        if not self.snr_gamma >= 0:
            raise DmatError(f"snr-gamma must be >= 0 (0 turns the weighting off), got {self.snr_gamma}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DmatError(f"lr-schedule must be {' or '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.lr_warmup_epochs < self.epochs:
            raise DmatError(f"lr-warmup-epochs must be in [0, epochs), got {self.lr_warmup_epochs}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise DmatError(f"lr-floor must be in [0, 1], got {self.lr_floor}")


LR_SCHEDULES = ("constant", "cosine")
METHODS = ("distill", "scratch")
RANDOM, PRUNED = "random", "pruned"  # a student's starting weights: its own random ones, or the teacher's pruned
INITS = (RANDOM, PRUNED)  # each one's function: dmat.stages.inits.INITIALISATIONS (a test keeps the two in step)
PRUNE_IMPORTANCES = ("magnitude", "taylor")  # how init=pruned ranks the teacher's channels (dmat.model.pruning)
# Student training defaults: 20 epochs keep the default `make students` (six sizes, digits 16x16,
# default teacher) within 20 minutes on a 2-thread CPU (estimated ~17 min; bench/bench_students.py).
STUDENT_TRAIN = TrainConfig(epochs=20)


@dataclass
class DistillConfig:
    """How a student learns from its teacher; logged as params with these names."""

    size_factor: float = 1.0
    method: str = "distill"  # "distill" or "scratch" (task loss only: the baseline)
    kd_weight: float = 1.0  # output-level KD: student eps vs teacher eps
    task_weight: float = 1.0  # student eps vs the true noise
    feature_weight: float = 0.0  # feature-level KD (BK-SDM); 0 turns it off
    student_steps: int = 50  # sampling steps the student uses at evaluation (when asked for)
    init: str = "random"  # "random", or "pruned": the teacher's weights cut down by channel pruning
    prune_importance: str = "magnitude"  # init=pruned keeps the channels with the most |w|, or |w * dL/dw| ("taylor")
    # the student's resolution, at most the teacher's (0: the teacher's); below it, it learns from teacher samples
    student_image_size: int = 0
    teacher_sample_fraction: float = 0.5  # a lower-resolution distill student's share of teacher samples (dmat.stages.resolution)

    def validate(self) -> "DistillConfig":
        self.size_factor = parse_size_factor(self.size_factor)
        if self.method not in METHODS:
            raise DmatError(f"method must be distill or scratch, got {self.method!r}")
        for name in ("kd_weight", "task_weight", "feature_weight"):
            if not getattr(self, name) >= 0:
                raise DmatError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.method == "distill" and self.kd_weight == 0 and self.feature_weight == 0:
            raise DmatError("method distill needs kd-weight or feature-weight > 0: use --method scratch for the task loss alone")
        if self.method == "scratch" and self.task_weight == 0:
            raise DmatError("method scratch trains on the task loss alone: task-weight must be > 0")
        if self.student_steps < 1:
            raise DmatError(f"student-steps must be a positive integer, got {self.student_steps}")
        if self.init not in INITS:
            raise DmatError(f"init must be {' or '.join(INITS)}, got {self.init!r}")
        if self.prune_importance not in PRUNE_IMPORTANCES:
            raise DmatError(f"prune-importance must be magnitude or taylor, got {self.prune_importance!r}")
        if self.student_image_size < 0:
            raise DmatError(f"student-image-size must be a positive integer (0: the teacher's), got {self.student_image_size}")
        if not 0.0 < self.teacher_sample_fraction < 1.0:
            raise DmatError(f"teacher-sample-fraction must be in (0, 1), got {self.teacher_sample_fraction}")
        return self

    def effective(self) -> "DistillConfig":
        """The weights actually used: a scratch student has no teacher terms."""
        if self.method == "scratch":
            return dataclasses.replace(self, kd_weight=0.0, feature_weight=0.0)
        return self


def parse_size_factor(value) -> float:
    """A size factor as a float in [0.01, 1.0], or one clear error."""
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise DmatError(f"size factor must be a number between {MIN_SIZE_FACTOR} and {MAX_SIZE_FACTOR}, got {value!r}") from None
    if not MIN_SIZE_FACTOR <= factor <= MAX_SIZE_FACTOR:
        raise DmatError(f"size factor must be between {MIN_SIZE_FACTOR} and {MAX_SIZE_FACTOR}, got {value}")
    return factor


def parse_sizes(text: str | None) -> list[float]:
    """`"0.2 0.4,0.5"` -> [0.2, 0.4, 0.5]; empty -> the study's default sizes. All checked up front."""
    parts = (text or "").replace(",", " ").split()
    return [parse_size_factor(p) for p in parts] if parts else list(DEFAULT_SIZE_FACTORS)


def with_overrides(cfg, **overrides):
    """`dataclasses.replace` that ignores None, so unset CLI options keep the defaults."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def flat_params(prefix: str, cfg) -> dict[str, object]:
    """A config as params named `{prefix}{field}` (`tracking.log_params` turns the values into text)."""
    return {f"{prefix}{f.name}": getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
