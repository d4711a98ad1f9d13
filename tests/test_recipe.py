"""The convergence recipe's levers (issue 28), each off by default: min-SNR-gamma loss weighting (validation stays the
plain loss), the learning-rate schedule (and its resume) and width scaling, and the convergence stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet
from recording import MemoryRecorder
from torch.utils.data import Subset

from dmat.data import DataSplits, load_splits
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.training.best import STOP_MIN_EPOCHS, BestSoFar
from dmat.training.loop import DiffusionLoss, fit
from dmat.training.losses import min_snr_weights
from dmat.training.state import TrainingState
from dmat.training.step import OptimizerStep

DIFFUSION = GaussianDiffusion(tiny_diffusion())


def _splits(cfg) -> DataSplits:
    full = load_splits(cfg)
    return DataSplits(Subset(full.train, range(256)), Subset(full.val, range(64)), full.image_size, full.channels)


def _batch(n: int = 32) -> torch.Tensor:
    return torch.stack([_splits(tiny_train()).train[i] for i in range(n)])


def test_min_snr_weights_equal_the_formula_on_known_timesteps():
    t = torch.tensor([0, 5, 10, 19])
    abar = DIFFUSION.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    for space, denominator in (("eps", snr), ("v", snr + 1)):
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / denominator
        torch.testing.assert_close(min_snr_weights(DIFFUSION, t, 5.0, space), expected.float())
    assert min_snr_weights(DIFFUSION, t, 5.0, "eps")[-1] == 1.0  # the noisiest t: SNR < gamma, weight 1


def test_the_weighted_loss_is_the_weighted_mse_of_the_same_draws():
    x0 = _batch(8)

    def model(x_t, t):
        return torch.zeros_like(x_t)

    weighted, parts = DiffusionLoss(DIFFUSION, 5.0).loss(model, x0, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same t and noise, drawn in the same order
    t = DIFFUSION.sample_timesteps(8, x0.device, generator)
    noise = torch.randn(x0.shape, generator=generator)
    per_image = noise.square().flatten(1).mean(1)
    torch.testing.assert_close(weighted, (min_snr_weights(DIFFUSION, t, 5.0, "eps") * per_image).mean())
    assert parts["task_loss"] == pytest.approx(per_image.mean().item())  # the reported component is the plain MSE
    plain, _ = DiffusionLoss(DIFFUSION).loss(model, x0, torch.Generator().manual_seed(3))
    assert plain.item() == pytest.approx(per_image.mean().item()) and plain.item() != pytest.approx(weighted.item())


def _state(cfg, gamma: float = 0.0, size_factor: float = 1.0, steps_per_epoch: int = 4) -> TrainingState:
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8, size_factor=size_factor))
    return TrainingState(model, DIFFUSION, DiffusionLoss(DIFFUSION, gamma), cfg, 64, steps_per_epoch=steps_per_epoch)


def test_validation_loss_is_the_plain_loss_whatever_the_weighting():
    x0, cfg = _batch(), tiny_train(snr_gamma=5.0)
    scores = []
    for gamma in (0.0, 5.0):
        state = _state(cfg, gamma)
        state.validate_batch(x0, torch.Generator().manual_seed(1))
        scores.append(state.val_metrics())
    assert scores[0] == scores[1]
    trained = [DiffusionLoss(DIFFUSION, g).loss(_state(cfg).model, x0, torch.Generator().manual_seed(1))[0].item()
               for g in (0.0, 5.0)]
    assert trained[0] != pytest.approx(trained[1])  # the training loss itself is weighted


def _cosine(step: int, peak: float, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    done = min(1.0, (step - warmup) / (total - warmup - 1))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done)))


def _lrs(step: OptimizerStep, x0: torch.Tensor, n: int) -> list[float]:
    seen = []
    for _ in range(n):
        step.step(step.model, x0, 1)
        seen.append(step.optimizer.param_groups[0]["lr"])
    return seen


def test_the_schedule_gives_each_step_its_lr_and_a_resume_continues_it():
    cfg = tiny_train(epochs=3, lr=1e-3, lr_schedule="cosine", lr_warmup_epochs=1, lr_floor=0.2)
    x0 = _batch(16)
    whole = _lrs(_state(cfg).optimizing, x0, 12)
    assert whole == pytest.approx([_cosine(s, 1e-3, 4, 12, 0.2) for s in range(12)])
    assert whole[3] == pytest.approx(1e-3) and whole[-1] == pytest.approx(2e-4)
    first = _state(cfg).optimizing
    _lrs(first, x0, 7)
    saved = first.state()
    assert saved["optimizer_steps"] == 7
    resumed = _state(cfg).optimizing
    resumed.restore(saved, main=True)
    assert _lrs(resumed, x0, 5) == pytest.approx(whole[7:])
    constant = _lrs(_state(tiny_train(lr=1e-3)).optimizing, x0, 3)
    assert constant == [1e-3] * 3  # the default: today's constant lr


def test_a_students_lr_scales_with_its_width_when_asked():
    cfg = tiny_train(lr=1e-3, lr_width_scaling=True)
    student = _state(cfg, size_factor=0.5).optimizing
    width = student.model.config.width(student.model.config.base_channels)
    assert width < student.model.config.base_channels
    assert _lrs(student, _batch(16), 1) == pytest.approx([1e-3 * math.sqrt(8 / width)])
    assert _lrs(_state(cfg).optimizing, _batch(16), 1) == pytest.approx([1e-3])  # the teacher: unscaled
    assert _lrs(_state(tiny_train(lr=1e-3), size_factor=0.5).optimizing, _batch(16), 1) == pytest.approx([1e-3])


def _stop_epoch(curve) -> int | None:
    best = BestSoFar()
    for epoch, loss in enumerate(curve, 1):
        best.improved(loss, epoch, {})
        if best.converged():
            return epoch
    return None


def test_the_convergence_stop_stops_converged_curves_and_not_improving_ones():
    rng, t = np.random.default_rng(0), np.arange(1, 101)
    for _ in range(20):
        flat = 1 + 0.005 * rng.normal(size=100)
        plateau = (1 + np.exp(-t / 5)) * (1 + 0.005 * rng.normal(size=100))
        improving = (1 + 2 * np.exp(-t / rng.uniform(40, 100))) * (1 + 0.005 * rng.normal(size=100))
        assert _stop_epoch(flat) == STOP_MIN_EPOCHS + 2  # three verdicts in a row, the first at epoch 20
        assert STOP_MIN_EPOCHS + 2 <= _stop_epoch(plateau) <= 40
        assert _stop_epoch(improving) is None


class FlatValidation(DiffusionLoss):
    """Trains on the DDPM loss; every validation pass scores 1: converged from the start."""

    def loss(self, model, x0, generator=None):
        loss, parts = super().loss(model, x0, generator)
        return (loss, parts) if model.training else (torch.tensor(1.0), parts)


def test_a_run_stops_when_converged_and_says_why():
    cfg = tiny_train(epochs=30, batch_size=128, early_stopping_patience=0, stop_when_converged=True, save_interval=50)
    recorder = MemoryRecorder()
    torch.manual_seed(0)
    result = fit(UNet(tiny_unet(image_size=8)), DIFFUSION, FlatValidation(DIFFUSION), _splits(cfg), cfg,
                 torch.device("cpu"), recorder)
    assert (result.epochs_run, result.stopped_early, result.stop_reason) == (STOP_MIN_EPOCHS + 2, True, "converged")
    assert recorder.summary["stopped_converged"] == 1.0 and recorder.summary["still_improving"] == 0.0
    assert "lr" in recorder.metrics[1]
