"""Behaviour against the teacher: sampler trajectories and per-timestep epsilon errors.

A trajectory is the sequence of states x_T, ..., x_0 a real sampler visits (recorded through the
samplers' callback), started from the same noise, and for DDPM with the same per-step noise, for
model and teacher. The epsilon errors are measured on held-out images noised to each timestep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmat.model.diffusion import GaussianDiffusion, sample


@dataclass
class Trajectory:
    states: torch.Tensor  # [n, steps + 1, C, H, W]; states[:, 0] is x_T, states[:, -1] the returned sample
    timesteps: list[int]  # the callback's timestep of each state (-1 for the final sample)


@torch.inference_mode()
def record(model, diffusion: GaussianDiffusion, x_T: torch.Tensor, sampler: str, steps: int, seed: int) -> Trajectory:
    """Run the sampler from x_T and keep every state it visits (on the CPU)."""
    states, timesteps = [], []

    def keep(_, t, x):
        states.append(x.cpu())
        timesteps.append(int(t))

    generator = torch.Generator(device=x_T.device).manual_seed(seed)  # DDPM's per-step noise, shared
    sample(model, diffusion, x_T, sampler, steps, callback=keep, generator=generator)
    return Trajectory(torch.stack(states, dim=1), timesteps)


def _flat(states: torch.Tensor) -> torch.Tensor:
    return states.flatten(start_dim=2).double()  # [n, steps + 1, pixels]


def path_length(traj: Trajectory) -> float:
    """Mean over images of the summed L2 distance between consecutive states."""
    return (_flat(traj.states).diff(dim=1).norm(dim=2).sum(dim=1)).mean().item()


def compare(model: Trajectory, teacher: Trajectory) -> dict:
    """Per-step MSE and cosine similarity (lists, index = sampling step, 0 = x_T) and their summaries.

    The means run over steps 1..S only: step 0 is the shared starting noise, where the MSE is 0 and the
    cosine 1 by construction, and counting it would pull every model towards the teacher by 1/(S+1).
    """
    a, b = _flat(model.states), _flat(teacher.states)
    mse = ((a - b) ** 2).mean(dim=2).mean(dim=0)
    cosine = F.cosine_similarity(a, b, dim=2).mean(dim=0)
    return {
        "traj_mse": mse.tolist(),
        "traj_cosine": cosine.tolist(),
        "traj_mse_mean": mse[1:].mean().item(),
        "traj_cosine_mean": cosine[1:].mean().item(),
        "final_mse": mse[-1].item(),
    }


@torch.inference_mode()
def eps_errors(model, diffusion: GaussianDiffusion, images: torch.Tensor, timesteps: list[int], seed: int,
               teacher=None, teacher_diffusion: GaussianDiffusion | None = None, batch_size: int = 500) -> dict[str, dict[int, float]]:
    """Per-timestep MSE of the model's epsilon against the true noise (and the teacher's epsilon).

    Every model sees the same noise at the same t (fixed by `seed`), so errors compare across models.
    The teacher's output is read as epsilon through its own process (it may predict v).
    """
    teacher_diffusion = teacher_diffusion or diffusion
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    true, vs_teacher = {}, {}
    for t in timesteps:
        sums = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(images), batch_size):
            x0 = images[i : i + batch_size]
            noise = torch.randn(x0.shape, generator=generator)
            x0, noise = x0.to(device), noise.to(device)
            t_batch = torch.full((len(x0),), t, device=device, dtype=torch.long)
            x_t = diffusion.q_sample(x0, t_batch, noise)
            eps = diffusion.predict_eps(model, x_t, t_batch)
            sums[0] += ((eps - noise) ** 2).mean(dim=(1, 2, 3)).sum().item()
            if teacher is not None:
                sums[1] += ((eps - teacher_diffusion.predict_eps(teacher, x_t, t_batch)) ** 2).mean(dim=(1, 2, 3)).sum().item()
        true[t] = sums[0].item() / len(images)
        if teacher is not None:
            vs_teacher[t] = sums[1].item() / len(images)
    return {"eps_mse_true": true, **({"eps_mse_teacher": vs_teacher} if teacher is not None else {})}
