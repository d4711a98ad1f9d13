"""The learning rate of each optimizer step: the run's `lr`, scaled with the model's width where asked, times a
schedule over the run's max epochs. Today's recipe is a constant lr, under which the validation loss still creeps
down ~1% per 20 epochs hundreds of epochs in (issue 28); a decay lets the weights settle. Options:

- `lr_schedule` "constant" (the default) or "cosine": a linear warm-up over `lr_warmup_epochs` (the first steps of
  a fresh AdamW are its noisiest), then a half cosine from the peak down to `lr_floor` x the peak at the last step
  of `epochs` (Loshchilov & Hutter 2017, "SGDR"; the warm-up as in Goyal et al. 2017);
- `lr_width_scaling`: the peak is lr x (base channels / the model's base width)^0.5, so a student a quarter as wide
  trains at twice the teacher's lr (EDM2: Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
  Diffusion Models", lr proportional to channels^-0.5).

The lr is a pure function of the optimizer-step count, which `last.pt` keeps, so a resumed run continues the curve.
"""

from __future__ import annotations

import math

from dmat.config import TrainConfig
from dmat.model.unet import UNetConfig


def width_scale(unet: UNetConfig) -> float:
    """(the teacher's base channels / this model's)^0.5: 1 for the teacher, above 1 for a narrower student."""
    return math.sqrt(unet.base_channels / unet.width(unet.base_channels))


def schedule_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, floor: float) -> float:
    """The lr of the optimizer step `step` (0 is the first) as a share of the peak: (step + 1) / warmup_steps during
    the warm-up; then 1 (constant) or floor + (1 - floor) (1 + cos(pi p)) / 2 with p the share of the steps after the
    warm-up done, reaching the floor at the run's last step (and staying there past it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2


class LearningRate:
    """The lr of every optimizer step of one model trained under `cfg`, with `steps_per_epoch` steps an epoch."""

    def __init__(self, cfg: TrainConfig, unet: UNetConfig, steps_per_epoch: int):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.peak = cfg.lr * (width_scale(unet) if cfg.lr_width_scaling else 1.0)

    def at(self, step: int) -> float:
        cfg, per_epoch = self.cfg, self.steps_per_epoch
        return self.peak * schedule_factor(step, cfg.epochs * per_epoch, cfg.lr_warmup_epochs * per_epoch,
                                           cfg.lr_schedule, cfg.lr_floor)
