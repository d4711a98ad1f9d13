"""What a whole study runs (`PipelineConfig`), what a sweep searches (`SweepConfig`) and how models are timed
side by side (`CostConfig`). They refer to the training and evaluation configs' defaults rather than
repeating them."""

from __future__ import annotations

from dataclasses import dataclass

from dmat.config.datasets import absolute_dataset
from dmat.config.evaluation import EvalConfig
from dmat.config.training import (
    DEFAULT_SIZE_FACTORS,
    INITS,
    METHODS,
    STUDENT_TRAIN,
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
EXECUTORS = ("local", "ray")  # local: `workers` processes on this machine; ray: a Ray cluster (dmat.study.executor)

# Two studies a user can afford. Every value here can still be overridden by its own option.
# quick: ends with the full report in about 15 minutes on a 2-core laptop CPU without bf16, from models that are
#   still improving (one seed, one student init and method, fixed short budgets): it shows what the study
#   measures, not the answer; its report says so on its first screen.
# full: the converged study on a laptop CPU (issue 28). The main line (distilled from the pruned teacher, MAIN_LINE)
#   at every size with three seeds and the steps grid; the two ablations (from scratch with the pruned start;
#   distilled from a random start) at a small, a middle and the full size (`ablation_sizes`), three seeds, so each
#   says with an interval whether distillation and a pruned start help there. Every model trains at a peak
#   learning rate of 1e-3 (2 epochs of warm-up, then a cosine decay over its epoch cap: at 2e-4 the teacher's KID
#   still fell 45% with 50% more epochs, bench/bench_convergence_check.py) and stops when the slope test finds its
#   validation loss converged (or
#   early stopping fires); one that reaches its cap still improving is named by the report. The teacher is 16
#   channels wide (0.41 M parameters: ample for 16 px digits, 4x cheaper than the 32-wide default), and every
#   evaluation generates 1,000 images: N is capped by the held-out reference (200 a side on digits, 500 on mnist5k),
#   and 1,000 leaves each of the K draws mostly its own images.
QUICK: dict[str, object] = {
    "sizes": (0.25, 0.5, 1.0), "methods": ("distill",), "inits": ("pruned",), "seeds": (0,),
    "teacher_epochs": 12, "student_epochs": 6, "student_budget": "fixed", "base_channels": 16,
    "num_samples": 400, "steps": 20, "steps_grid": (), "ablation_sizes": (), "lr": TrainConfig.lr,
    "lr_warmup_epochs": 0, "lr_schedule": "constant", "stop_when_converged": False}
FULL: dict[str, object] = {
    "sizes": DEFAULT_SIZE_FACTORS, "methods": METHODS, "inits": ("random", "pruned"), "seeds": (0, 1, 2),
    "teacher_epochs": 100, "student_epochs": 30, "student_budget": "fixed", "base_channels": 16,
    "num_samples": 1000, "steps": int(EvalConfig.steps), "steps_grid": (5, 10, 20, 50),
    "ablation_sizes": (0.2, 0.5, 1.0), "lr": 1e-3, "lr_warmup_epochs": 2, "lr_schedule": "cosine",
    "stop_when_converged": True}
RECIPE = ("lr", "lr_warmup_epochs", "lr_schedule", "stop_when_converged")  # how every model of a study trains
MAIN_LINE = ("distill", "pruned")  # (method, init) of the study's answer; the other arms are its ablations
PRESETS = {"quick": QUICK, "full": FULL}
PRESET_FIELDS = tuple(PRESETS["full"])  # the fields a preset sets: their options default to the preset's value


@dataclass
class PipelineConfig:
    """What the study varies and how long each stage trains; every other setting keeps its default. The class
    defaults are the quick preset's values; `from_preset` builds either preset with overrides."""

    preset: str = "quick"  # see PRESETS
    dataset: str = TrainConfig.dataset
    image_size: int = TrainConfig.image_size
    sizes: tuple[float, ...] = QUICK["sizes"]
    methods: tuple[str, ...] = QUICK["methods"]
    inits: tuple[str, ...] = QUICK["inits"]  # every student once per init (random and/or pruned)
    teacher_epochs: int = QUICK["teacher_epochs"]  # an epoch cap: early stopping on the validation loss
    student_epochs: int = QUICK["student_epochs"]
    base_channels: int = QUICK["base_channels"]  # the teacher's
    timesteps: int = DiffusionConfig.timesteps
    num_samples: int = QUICK["num_samples"]
    steps: int = QUICK["steps"]
    steps_grid: tuple[int, ...] = QUICK["steps_grid"]  # the main line's and teacher's evaluations also at these steps
    seeds: tuple[int, ...] = QUICK["seeds"]  # every student once per seed; the teacher with the first
    student_budget: str = QUICK["student_budget"]  # how long students train: see STUDENT_BUDGETS
    ablation_sizes: tuple[float, ...] = QUICK["ablation_sizes"]  # where arms other than MAIN_LINE run; (): every size
    lr: float = QUICK["lr"]  # every model's peak learning rate (TrainConfig.lr)
    lr_warmup_epochs: int = QUICK["lr_warmup_epochs"]  # every model's (TrainConfig.lr_warmup_epochs)
    lr_schedule: str = QUICK["lr_schedule"]  # every model's (TrainConfig.lr_schedule), over its epoch cap
    stop_when_converged: bool = QUICK["stop_when_converged"]  # every model's (TrainConfig.stop_when_converged)
    device: str = TrainConfig.device
    precision: str = TrainConfig.precision
    reuse_any_commit: bool = False  # reuse finished stages on params alone, even from other code (git commits)
    workers: int = 0  # stages run at once; 0: what pays on this hardware (dmat.study.executor.default_workers)
    executor: str = "local"  # see EXECUTORS
    ray_address: str = ""  # --executor ray: the cluster (default: $RAY_ADDRESS, else a local Ray instance)

    @classmethod
    def from_preset(cls, preset: str = "quick", **given) -> "PipelineConfig":
        """The preset's values, then each option given (None: not given, the preset's value stays)."""
        if preset not in PRESETS:
            raise DmatError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        return cls(preset=preset, **values)

    def validate(self) -> "PipelineConfig":
        check_precision(self.precision)
        self.dataset = absolute_dataset(self.dataset)  # stages start in the project folder, not this one
        for name, choices in (("preset", PRESETS), ("executor", EXECUTORS), ("student_budget", STUDENT_BUDGETS)):
            if getattr(self, name) not in choices:
                raise DmatError(f"{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                f"got {getattr(self, name)!r}")
        if self.workers < 0:
            raise DmatError(f"workers must be 0 (decide from the hardware) or more, got {self.workers}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise DmatError(f"seeds must be distinct integers >= 0, e.g. --seeds 0,1,2, got {self.seeds or 'nothing'}")
        self.sizes = tuple(parse_size_factor(s) for s in self.sizes)
        if not self.sizes:
            raise DmatError("sizes is empty: give at least one size factor, e.g. --sizes '0.2 0.5'")
        self.ablation_sizes = tuple(parse_size_factor(s) for s in self.ablation_sizes)
        if outside := [s for s in self.ablation_sizes if s not in self.sizes]:
            raise DmatError(f"ablation-sizes must be among the sizes ({', '.join(map(str, self.sizes))}), got "
                            f"{', '.join(map(str, outside))}: add them to --sizes or give 'none' (every size)")
        for name, known in (("methods", METHODS), ("inits", INITS)):
            if not (given := getattr(self, name)) or any(value not in known for value in given):
                raise DmatError(f"{name} must be among {', '.join(known)}, got {' '.join(given) or 'nothing'}")
        for name in ("teacher_epochs", "student_epochs", "num_samples", "steps", "timesteps", "base_channels"):
            if getattr(self, name) <= 0:
                raise DmatError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        # the recipe as the model with the fewest epochs trains it: a bad lr or warm-up fails here, not stages later
        TrainConfig(**self.recipe(), epochs=min(self.teacher_epochs, self.student_training()["epochs"])).validate()
        if any(s <= 0 or s > self.timesteps for s in self.steps_grid):
            raise DmatError(f"steps-grid must be step counts from 1 to timesteps={self.timesteps}, "
                            f"got {','.join(map(str, self.steps_grid))}")
        return self

    @property
    def main_line(self) -> tuple[str, str]:
        """(method, init) of the arm every size trains in: MAIN_LINE's where the study has it."""
        method = MAIN_LINE[0] if MAIN_LINE[0] in self.methods else self.methods[0]
        return method, MAIN_LINE[1] if MAIN_LINE[1] in self.inits else self.inits[-1]

    def arm_sizes(self, method: str, init: str) -> tuple[float, ...]:
        """The sizes an arm trains: every size on the main line; with `ablation_sizes`, those for an arm that changes
        one thing of the main line (its method or its init: each answers one question, whether distillation or the
        pruned start helps) and none for an arm that changes both (no question of the study needs it); without
        them, every size for every arm (the full factorial)."""
        if (method, init) == self.main_line or not self.ablation_sizes:
            return self.sizes
        return self.ablation_sizes if method == self.main_line[0] or init == self.main_line[1] else ()

    @property
    def num_students(self) -> int:
        return len(self.seeds) * sum(len(self.arm_sizes(m, i)) for m in self.methods for i in self.inits)

    def recipe(self) -> dict[str, object]:
        """The training recipe every model of the study (teacher and students) trains with."""
        return {name: getattr(self, name) for name in RECIPE}

    def student_training(self) -> dict[str, int]:
        """The students' epochs and early-stopping patience under `student_budget`."""
        patience = TrainConfig.early_stopping_patience
        epochs = {"fixed": self.student_epochs, "teacher": self.teacher_epochs,
                  "early-stopping": 2 * self.teacher_epochs}[self.student_budget]
        return {"epochs": epochs, "early_stopping_patience": patience}


# a sweep's storage URL, password included, as its workers (and `dmat runs --stale --mark-killed`) get it: in their
# environment, which only their user can read, not on a command line, which every user of the machine can
STORAGE_ENV = "DMAT_OPTUNA_STORAGE"


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
    executor: str = "local"  # where the workers run: see EXECUTORS
    ray_address: str = ""  # --executor ray: the cluster (default: $RAY_ADDRESS, else a local Ray instance)

    def validate(self) -> "SweepConfig":
        check_precision(self.precision)
        if self.executor not in EXECUTORS:
            raise DmatError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        self.dataset = absolute_dataset(self.dataset)
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
