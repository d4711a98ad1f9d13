"""Evaluation settings: the same for every model compared, and logged as the evaluation run's params.

Kept free of heavy imports so the CLI can build its options from it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmat.errors import DmatError
from dmat.model.diffusion import SAMPLERS
from dmat.runtime import check_precision

STUDENT_STEPS = "student"  # --steps student: a student's own `student_steps` param


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 2000  # generated images; FID/KID use N = min(this, half of each real reference) a side
    sampler: str = "ddim"
    steps: str = "50"  # sampling steps, or "student" for each student's own student_steps
    # further step counts at which FID/KID (same N, draws and real sets) and the sampling cost are measured
    # in the same evaluation run (metrics grid_*, step = sampling steps): quality per inference budget
    steps_grid: tuple[int, ...] = ()
    features: str = "classifier"  # "classifier" (trained on the data set) or "inception"
    seed: int = 0
    batch_size: int = 500  # images per sampling batch
    num_trajectories: int = 64  # shared-noise trajectories compared with the teacher
    eps_timesteps: int = 20  # timesteps of the per-timestep epsilon errors
    floor_draws: int = 10  # K random draws of N real and N generated that FID/KID average over (floor: floor.py)
    device: str = "auto"
    precision: str = "auto"  # sampling: "fp32", "bf16" autocast, or "auto" (the model's training precision); features fp32

    def validate(self) -> "EvalConfig":
        for name in ("num_samples", "batch_size", "num_trajectories", "eps_timesteps"):
            if getattr(self, name) <= 0:
                raise DmatError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.floor_draws < 2:
            raise DmatError(f"floor-draws must be at least 2 (the floor is a mean and sd over draws), "
                            f"got {self.floor_draws}")
        if self.sampler not in SAMPLERS:
            raise DmatError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check_precision(self.precision)
        if self.features not in ("classifier", "inception"):
            raise DmatError(f"features must be classifier or inception, got {self.features!r}")
        if any(s <= 0 for s in self.steps_grid):
            raise DmatError(f"steps-grid must be positive integers, got {','.join(map(str, self.steps_grid))}")
        if self.steps != STUDENT_STEPS and not (str(self.steps).isdigit() and int(self.steps) > 0):
            raise DmatError(f"steps must be a positive integer or {STUDENT_STEPS!r}, got {self.steps!r}")
        return self

    def resolved_steps(self, role: str, params: dict) -> int:
        """The sampling steps for one model: the setting, or a student's own student_steps param."""
        if self.steps != STUDENT_STEPS:
            return int(self.steps)
        if role != "student" or "student_steps" not in params:
            raise DmatError(f"--steps {STUDENT_STEPS} needs a student run with a student_steps param: give a number")
        return int(float(params["student_steps"]))
