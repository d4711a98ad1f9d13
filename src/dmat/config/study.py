"""What a whole study runs (`PipelineConfig`), what a sweep searches (`SweepConfig`) and how models are timed
side by side (`CostConfig`). They refer to the training and evaluation configs' defaults rather than
repeating them."""

from __future__ import annotations

from dataclasses import dataclass

from dmat.config.evaluation import EvalConfig
from dmat.config.training import (
    DEFAULT_SIZE_FACTORS,
    INITS,
    METHODS,
    STUDENT_TRAIN,
    DistillConfig,
    TrainConfig,
    parse_size_factor,
)
from dmat.errors import DmatError
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig
from dmat.runtime import check_precision

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
    """How `dmat cost` times every model of a study side by side (dmat.evaluation.side_by_side)."""

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
