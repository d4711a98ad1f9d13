"""What a model is trained to minimise: the `TrainingLoss` protocol the loop calls, the DDPM loss of the
teacher (and of a student trained from scratch), and the min-SNR-gamma weighting of its timesteps. A distilled
student's loss is `dmat.training.distillation`'s."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch

from dmat.model.diffusion import GaussianDiffusion


class TrainingLoss(Protocol):
    """What the loop minimises (its `criterion`; "objective" is the sweep's Optuna objective only). May also
    define `trainable_parameters()`: parameters of its own (e.g. distillation projections) that the optimizer trains
    beside the model's; and `unweighted()`: the same loss without its timestep weighting, which validation scores
    (so validation losses compare across recipes)."""

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch of clean images, plus its named components; every random draw
        (timesteps, noise) comes from `generator`."""


def min_snr_weights(diffusion: GaussianDiffusion, t: torch.Tensor, gamma: float, space: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", eq. 9 and
    sec. 3.4): weight each timestep as the x_0 loss clamped at SNR gamma, min(SNR(t), gamma) * ||x0 error||^2, which
    stops the many easy low-noise timesteps from dominating the gradient. SNR(t) = abar_t / (1 - abar_t). A loss
    measured in eps space is SNR x the x_0 loss, in v space (SNR + 1) x, so the weight on that loss is
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v. One weight per image, float32."""
    abar = diffusion.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    if space == "eps":
        return (gamma / snr).clamp(max=1.0).float()  # min(SNR, gamma) / SNR, also where SNR is 0
    return (snr.clamp(max=gamma) / (snr + 1)).float()


def weighted_mse(output: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """(the mean squared error with each image's mean weighted by `weights`, the plain MSE): the first is trained
    on, the second reported, so a loss curve reads the same whatever the weighting. None: the plain MSE, computed
    as it always was."""
    if weights is None:
        loss = torch.nn.functional.mse_loss(output, target)
        return loss, loss.item()
    per_image = (output.float() - target.float()).square().flatten(1).mean(1)
    return (weights * per_image).mean(), per_image.mean().item()


@dataclass
class DiffusionLoss:
    """The DDPM training loss: what the teacher (and a student trained from scratch) minimises. `snr_gamma` > 0
    weights its timesteps by min-SNR-gamma (in the space the network predicts: eps or v); 0 is the plain loss.
    Its `task_loss` is the plain MSE either way."""

    diffusion: GaussianDiffusion
    snr_gamma: float = 0.0

    def loss(self, model, x0, generator=None):
        if not self.snr_gamma:
            loss = self.diffusion.training_loss(model, x0, generator)
            return loss, {"task_loss": loss.item()}
        d = self.diffusion
        t = d.sample_timesteps(x0.shape[0], x0.device, generator)  # drawn as training_loss draws them
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = d.q_sample(x0, t, noise)
        weights = min_snr_weights(d, t, self.snr_gamma, d.config.prediction)
        loss, plain = weighted_mse(model(x_t, t), d.target(x0, t, noise), weights)
        return loss, {"task_loss": plain}

    def unweighted(self) -> "DiffusionLoss":
        return dataclasses.replace(self, snr_gamma=0.0) if self.snr_gamma else self
