"""The Gaussian diffusion process of DDPM (Ho et al. 2020) and its samplers: DDPM, DDIM, DPM-Solver++(2M).

The noise schedule is part of a model's config (`DiffusionConfig`, saved in every checkpoint), so
training, sampling and every analysis read the same schedule from the run. Samplers are plain
functions in the style of k-diffusion: `sample_ddim(model, diffusion, x_T, steps, callback=...)`;
the callback sees every state x_T, ..., x_0 the sampler visits, which is what a trajectory is.
Every sampler visits the same timesteps (`sampling_timesteps`) and ends with one step to abar = 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from dmat.errors import DmatError
from dmat.runtime import autocast

# callback(step_index, timestep, x): step_index 0 is x_T, the last call is the returned sample.
StepCallback = Callable[[int, int, torch.Tensor], None]

# DDPM's linear schedule at T=1000, scaled by 1000/T for other T. Its last beta, 0.02 * 1000 / T, reaches
# 1 at T = 20 (alpha-bar exactly 0) and exceeds it below, so the linear schedule needs T > 20.
LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02
LINEAR_MIN_TIMESTEPS = 20


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "cosine"  # "linear" (DDPM) or "cosine" (Nichol & Dhariwal 2021)
    prediction: str = "eps"  # "eps" or "v" (Salimans & Ho 2022)

    def validate(self) -> "DiffusionConfig":
        if self.timesteps < 2:
            raise DmatError(f"timesteps must be at least 2, got {self.timesteps}")
        if self.schedule not in ("linear", "cosine"):
            raise DmatError(f"schedule must be linear or cosine, got {self.schedule!r}")
        if self.schedule == "linear" and self.timesteps <= LINEAR_MIN_TIMESTEPS:
            beta_T = LINEAR_BETA_END * 1000.0 / self.timesteps
            raise DmatError(
                f"schedule linear with timesteps={self.timesteps} is not a diffusion process: DDPM's betas scaled "
                f"to T end at beta_T = 0.02 * 1000 / T = {beta_T:.3g} (>= 1), so alpha-bar reaches 0 and x_0 "
                f"cannot be recovered; use timesteps > {LINEAR_MIN_TIMESTEPS} or --schedule cosine"
            )
        if self.prediction not in ("eps", "v"):
            raise DmatError(f"prediction must be eps or v, got {self.prediction!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """beta_1..beta_T in float64. Linear: DDPM's 1e-4..0.02 scaled to T. Cosine: Nichol & Dhariwal eq. 17."""
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, timesteps, dtype=torch.float64)
    s = 0.008
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class GaussianDiffusion:
    """q(x_t | x_0), the training loss and the conversions between eps, v and x_0 predictions."""

    def __init__(self, config: DiffusionConfig):
        self.config = config.validate()
        self.timesteps = config.timesteps
        self.betas = make_betas(config.schedule, config.timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: the noise eps, or the velocity
        v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "Progressive Distillation for
        Fast Sampling of Diffusion Models", sec. 4 and appendix D), whose scale stays even over t."""
        if self.config.prediction == "eps":
            return noise
        abar = self._abar(t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def eps_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output as an epsilon prediction, whatever it was trained to predict.

        From v: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t, which follows from the definition of v
        and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        if self.config.prediction == "eps":
            return output
        abar = self._abar(t, x_t)
        return abar.sqrt() * output + (1 - abar).sqrt() * x_t

    def predict_eps(self, model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_from_output(model(x_t, t).float(), x_t, t)  # fp32 sampler updates, whatever the network's

    def predict_x0(self, model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's prediction of x_0, in fp32. From v it is sqrt(abar_t) x_t - sqrt(1 - abar_t) v, taken
        directly: through eps, x_t - sqrt(1 - abar_t) eps cancels to ~abar_t x_t, which fp32 loses where abar_t
        is tiny (the cosine schedule's first sampling steps, abar ~ 1e-9)."""
        output, abar = model(x_t, t).float(), self._abar(t, x_t)
        if self.config.prediction == "eps":
            return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
        return abar.sqrt() * x_t - (1 - abar).sqrt() * output

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.timesteps, (n,), device=device, generator=generator)

    def training_loss(self, model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Simple DDPM loss (eq. 14): MSE between the network output and its target at a random t."""
        t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        return F.mse_loss(model(x_t, t), self.target(x0, t, noise))

    def sampling_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly spaced timesteps from T-1 down to 0 (the DDIM sub-sequence tau)."""
        if not 1 <= steps <= self.timesteps:
            raise DmatError(f"sampling steps must be between 1 and timesteps={self.timesteps}, got {steps}")
        return sorted({round(x) for x in torch.linspace(0, self.timesteps - 1, steps).tolist()}, reverse=True)


@torch.no_grad()
def _sample(model, diffusion: GaussianDiffusion, x_T, steps, eta, callback, generator, clip_x0=True):
    """Generalised DDIM update (Song et al. 2021, eq. 12) over a sub-sequence of timesteps.

    eta=0 is deterministic DDIM; eta=1 is DDPM's ancestral sampler with the posterior variance
    (over all T steps it is exactly DDPM's Algorithm 2).

    With `clip_x0`, the predicted x_0 is clipped to the data range [-1, 1] and eps is re-derived
    from the clipped x_0, so the step stays consistent with the x_0 it moves towards. Early, large-t
    predictions of x_0 overshoot the data range badly; clipping them is what DDPM's reference code
    (`clip_denoised=True`) and diffusers' `clip_sample` do, and it keeps few-step DDIM samples in range.
    """
    taus = diffusion.sampling_timesteps(steps)
    abar = diffusion.alphas_cumprod
    x = x_T
    if callback is not None:
        callback(0, taus[0], x)
    for i, t in enumerate(taus):
        a_t = abar[t].item()
        a_prev = abar[taus[i + 1]].item() if i + 1 < len(taus) else 1.0
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = diffusion.predict_eps(model, x, t_batch)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
        if callback is not None:
            callback(i + 1, taus[i + 1] if i + 1 < len(taus) else -1, x)
    return x


def sample_ddim(model, diffusion, x_T, steps=50, eta=0.0, callback: StepCallback | None = None, generator=None):
    return _sample(model, diffusion, x_T, steps, eta, callback, generator)


def sample_ddpm(model, diffusion, x_T, steps=None, callback: StepCallback | None = None, generator=None):
    return _sample(model, diffusion, x_T, steps or diffusion.timesteps, 1.0, callback, generator)


def _alpha_sigma_lambda(abar: float) -> tuple[float, float, float]:
    """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the half log-SNR lambda_t = log(alpha_t / sigma_t)."""
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    return alpha, sigma, math.log(alpha / sigma)


@torch.no_grad()
def sample_dpmpp2m(model, diffusion, x_T, steps=20, callback: StepCallback | None = None, generator=None,
                   clip_x0=True):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): a second-order multistep solver of the diffusion ODE in its data
    prediction x_theta (`predict_x0`); the paper reports 10-20 steps for what DDIM needs 50+ for, and
    bench/bench_sampler.py measures that on a dmat teacher.

    Their exact solution x_t = sigma_t / sigma_s x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x_theta dlambda,
    with x_theta taken as constant over the step, is DPM-Solver++(1), which is DDIM:
        x_t = sigma_t / sigma_s x_s - alpha_t (e^{-h} - 1) D,    h = lambda_t - lambda_s,    D = x_theta(s).
    2M replaces D by a linear extrapolation from the previous step's prediction (r = h_prev / h):
        D = (1 + 1 / (2r)) x_theta(s) - 1 / (2r) x_theta(s_prev).
    The first step has no previous prediction and is first order. The last step, from t = 0 to abar = 1
    (sigma = 0, lambda = inf, e^{-h} = 0), is first order too: it returns x_theta(0), as DDIM's last step does
    (diffusers' final_sigmas_type="zero"). `clip_x0` clips x_theta to [-1, 1] as DDIM's clip does (diffusers'
    thresholding with sample_max_value=1). Deterministic: `generator` is accepted like every sampler's, unused.
    """
    taus = diffusion.sampling_timesteps(steps)
    x, previous = x_T, None  # previous: (lambda, x_theta) of the step before
    if callback is not None:
        callback(0, taus[0], x)
    for i, t in enumerate(taus):
        _, sigma_s, lambda_s = _alpha_sigma_lambda(diffusion.alphas_cumprod[t].item())
        x0 = diffusion.predict_x0(model, x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if i + 1 == len(taus):
            x = x0
        else:
            alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(diffusion.alphas_cumprod[taus[i + 1]].item())
            h = lambda_t - lambda_s
            d = x0
            if previous is not None:
                half_over_r = 0.5 * h / (lambda_s - previous[0])
                d = (1 + half_over_r) * x0 - half_over_r * previous[1]
            x = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * d
        previous = (lambda_s, x0)
        if callback is not None:
            callback(i + 1, taus[i + 1] if i + 1 < len(taus) else -1, x)
    return x


SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm, "dpmpp2m": sample_dpmpp2m}


def sample(model, diffusion, x_T, sampler="ddim", steps=50, callback=None, generator=None, precision="fp32"):
    """Run the named sampler from the given starting noise x_T; the network in `precision` ("fp32" or "bf16",
    see runtime.resolve_precision), the updates in fp32."""
    if sampler not in SAMPLERS:
        raise DmatError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    with autocast(x_T.device, precision):
        return SAMPLERS[sampler](model, diffusion, x_T, steps=steps, callback=callback, generator=generator)


def sample_from_seed(model, diffusion, num_images: int, sampler="ddim", steps=50, seed=0, device="cpu",
                     precision="fp32"):
    """`num_images` samples whose starting noise, and then the sampler's own noise, come from one generator
    seeded with `seed`: what a seed means wherever dmat samples (the sample grid, the served MLflow Model)."""
    c = model.config
    generator = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn((num_images, c.in_channels, c.image_size, c.image_size), generator=generator, device=device)
    return sample(model, diffusion, x_T, sampler, steps, generator=generator, precision=precision)
