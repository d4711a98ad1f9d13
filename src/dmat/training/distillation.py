"""The distillation loss, pure torch: a student's loss at the same x_t and t as its frozen teacher,

    kd_weight * MSE(student eps, teacher eps) + task_weight * MSE(student eps, true noise)
      [+ feature_weight * MSE(projected student features, teacher features)]

With `snr_gamma` > 0 the task and KD terms take the same min-SNR-gamma weights per image (both are eps-space MSEs
at the same t, so both scale with SNR(t) against the x_0 error; weighting only the task term would leave the KD
term, equal in weight by default, pulling the student back to uniform timestep emphasis, undoing half the lever).
The feature term stays uniform: features are not in eps space and have no SNR scale. The reported components are
the plain MSEs either way, and `unweighted()` (what validation scores) is the plain loss.

The feature term follows BK-SDM (Kim et al. 2023): the middle block and every decoder level are matched,
through a trainable 1x1 convolution where the widths differ. `TeacherPass` computes the teacher's output on a
batch once, so students trained in one loop share it. The runs that use it are in dmat.stages.distill."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dmat.config import DistillConfig
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.training.losses import min_snr_weights, weighted_mse


class TeacherPass:
    """The frozen teacher's forward pass (eval mode, no gradients). With `remember`, its outputs on the current
    batch are kept and given again for the same x_t and t: students trained in one loop draw the same x_t and t
    (the same seeded noise on the same batches), so the teacher runs once per batch for all of them. `forget`
    before each batch (what `training.fit_together`'s `before_batch` is for)."""

    def __init__(self, model: UNet, remember: bool = False):
        self.model, self.remember = model.eval().requires_grad_(False), remember
        self._seen: list[tuple[torch.Tensor, torch.Tensor, bool, tuple]] = []

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, features: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(output, features: the middle block's and every decoder level's, or [] when not asked for)."""
        for seen_x, seen_t, seen_features, output in self._seen:
            if seen_features >= features and torch.equal(seen_t, t) and torch.equal(seen_x, x_t):
                return output
        output = self.model(x_t, t, return_features=features)
        output = output if features else (output, [])
        if self.remember:
            self._seen.append((x_t, t, features, output))
        return output

    def forget(self) -> None:
        self._seen.clear()


class DistillLoss:
    """The student's loss (a training.TrainingLoss); the 1x1 feature projections are trained with the student.
    `teacher` is the teacher's network, or a `TeacherPass` that several students' objectives share."""

    def __init__(self, diffusion: GaussianDiffusion, settings: DistillConfig, teacher: UNet | TeacherPass | None = None,
                 student_channels: list[int] | None = None, snr_gamma: float = 0.0):
        self.diffusion, self.settings, self.snr_gamma = diffusion, settings.effective(), snr_gamma
        shared = teacher if isinstance(teacher, TeacherPass) or teacher is None else TeacherPass(teacher)
        self.teacher = shared if self.settings.method == "distill" else None
        self.projections = nn.ModuleList()
        if self.teacher is not None and self.settings.feature_weight > 0:
            device = next(self.teacher.model.parameters()).device
            self.projections.extend(
                nn.Conv2d(s, t, 1, device=device) if s != t else nn.Identity()
                for s, t in zip(student_channels, self.teacher.model.feature_channels))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.projections.parameters())

    def unweighted(self) -> "DistillLoss":
        """The same loss (same teacher pass, same projections) with uniform timestep weights: what validation scores."""
        if not self.snr_gamma:
            return self
        plain = copy.copy(self)
        plain.snr_gamma = 0.0
        return plain

    def loss(self, model, x0, generator=None):
        d, w = self.diffusion, self.settings
        t = d.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = d.q_sample(x0, t, noise)
        features, parts = len(self.projections) > 0, {}
        out = model(x_t, t, return_features=features)
        out, student_features = out if features else (out, [])
        eps = d.eps_from_output(out, x_t, t)
        weights = min_snr_weights(d, t, self.snr_gamma, "eps") if self.snr_gamma else None
        task, parts["task_loss"] = weighted_mse(eps, noise, weights)
        total = w.task_weight * task
        if self.teacher is not None:
            t_out, teacher_features = self.teacher(x_t, t, features)
            with torch.no_grad():
                teacher_eps = d.eps_from_output(t_out, x_t, t)
            kd, parts["kd_loss"] = weighted_mse(eps, teacher_eps, weights)
            total = total + w.kd_weight * kd
            if features:
                feat = torch.stack([F.mse_loss(p(s), t_f) for p, s, t_f in
                                    zip(self.projections, student_features, teacher_features)]).mean()
                total = total + w.feature_weight * feat
                parts["feature_loss"] = feat.item()
        return total, parts
