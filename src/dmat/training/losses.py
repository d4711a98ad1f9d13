"""What a model is trained to minimise: the `TrainingLoss` protocol the loop calls, and the DDPM loss of the
teacher (and of a student trained from scratch). A distilled student's loss is `dmat.training.distillation`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dmat.model.diffusion import GaussianDiffusion


class TrainingLoss(Protocol):
    """What the loop minimises (its `criterion`; "objective" is the sweep's Optuna objective only). May also
    define `trainable_parameters()`: parameters of its own (e.g. distillation projections) that the optimizer trains
    beside the model's."""

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch of clean images, plus its named components; every random draw
        (timesteps, noise) comes from `generator`."""


@dataclass
class DiffusionLoss:
    """The DDPM training loss: what the teacher (and a student trained from scratch) minimises."""

    diffusion: GaussianDiffusion

    def loss(self, model, x0, generator=None):
        loss = self.diffusion.training_loss(model, x0, generator)
        return loss, {"task_loss": loss.item()}
