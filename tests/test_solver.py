"""DPM-Solver++(2M): the same numbers as diffusers' scheduler on a fixed model and noise, and closer to the
many-step ODE solution than DDIM at the same few steps."""

import pytest
import torch

from dmat.config.evaluation import EvalConfig
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion, sample, sample_ddim, sample_dpmpp2m
from dmat.model.unet import UNet, UNetConfig


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    config = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=())
    return UNet(config).eval()


def mixture_oracle(d: GaussianDiffusion, points: torch.Tensor, spread: float = 0.1):
    """The exact network for data drawn from a mixture of Gaussians N(point, spread^2 I), one per image of `points`
    [K, C, H, W], equally likely: its x_0 prediction is the posterior mean, so the ODE bends (the weights sharpen
    as t falls) and lands in a continuum, not on a point."""

    def model(x_t, t):
        abar = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        var = alpha**2 * spread**2 + sigma**2  # of x_t given the component
        offset = x_t[:, None] - alpha[:, None] * points[None]  # [B, K, C, H, W]
        weights = torch.softmax(-offset.pow(2).flatten(2).sum(-1) / (2 * var.view(-1, 1)), dim=1)
        means = points[None] + (alpha * spread**2 / var)[:, None] * offset  # E[x_0 | x_t, component]
        x0 = torch.einsum("bk,bkchw->bchw", weights, means)
        eps = (x_t - alpha * x0) / sigma
        return eps if d.config.prediction == "eps" else alpha * eps - sigma * x0

    return model


def diffusers_dpmpp2m(model, d: GaussianDiffusion, x_T, steps: int, clip: bool):
    """diffusers' DPMSolverMultistepScheduler set up as dmat's solver: the same betas, dmat's own timesteps (no
    `timestep_spacing` gives them: "linspace" with steps - 1 drops t = 0, which dmat visits), a last step to
    sigma = 0 ("zero", which diffusers takes first order, as dmat does), and dmat's clip to [-1, 1] as
    thresholding with sample_max_value=1 (the threshold s is clamped to [1, 1])."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=d.timesteps, beta_schedule="squaredcos_cap_v2" if d.config.schedule == "cosine" else "linear",
        beta_start=1e-4, beta_end=0.02, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
        prediction_type="epsilon" if d.config.prediction == "eps" else "v_prediction", thresholding=clip,
        sample_max_value=1.0, lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
        use_karras_sigmas=False)
    assert torch.allclose(scheduler.betas.double(), d.betas, atol=1e-7)  # the same schedule, to float32
    # diffusers multiplies the betas up in float32: alpha-bar ends ~1e-5 (relative) off the float64 product at the
    # cosine schedule's noisy end, where x_0 = (x_t - sigma eps) / alpha divides by alpha ~ 5e-5. Same schedule,
    # dmat's product, so what is compared is the solver.
    scheduler.alphas_cumprod = d.alphas_cumprod.clone()
    scheduler.set_timesteps(timesteps=d.sampling_timesteps(steps))
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [10, 20])
# A random network's x_0 is clipped (as dmat samples by default): unclipped, an eps-network's x_0 at the cosine's
# first step is ~x_T / alpha ~ 1e4 and only its relative error is at float precision. The oracle runs unclipped.
@pytest.mark.parametrize("network, clip", [("unet", True), ("oracle", False)])
def test_dpmpp2m_equals_diffusers_scheduler(schedule, prediction, steps, network, clip):
    d = GaussianDiffusion(DiffusionConfig(timesteps=1000, schedule=schedule, prediction=prediction))
    points = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.2 - 0.6
    model = tiny_unet() if network == "unet" else mixture_oracle(d, points)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = sample_dpmpp2m(model, d, x_T, steps=steps, clip_x0=clip)
    theirs = diffusers_dpmpp2m(model, d, x_T, steps, clip)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0.0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_dpmpp2m_is_closer_to_the_ode_solution_than_ddim_at_few_steps(schedule):
    """Against a 1000-step DDIM reference, on data whose finest detail is ~0.05 (digits' grey levels are 0.125
    apart). Where the data still spreads at ~0.2-0.3 when t reaches 0, dmat's timesteps (even in t, ending at
    t = 0 where lambda jumps by ~3 in the last step, r ~ 0.2) cost 2M its gain: it is no closer than DDIM there."""
    d = GaussianDiffusion(DiffusionConfig(timesteps=1000, schedule=schedule))
    mean = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.6
    model = mixture_oracle(d, mean, spread=0.05)
    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = sample_ddim(model, d, x_T, steps=1000)
    for steps in (10, 20):
        ddim = (sample_ddim(model, d, x_T, steps=steps) - reference).pow(2).mean().item()
        dpm = (sample_dpmpp2m(model, d, x_T, steps=steps) - reference).pow(2).mean().item()
        assert dpm < ddim, (steps, dpm, ddim)


def test_dpmpp2m_is_a_sampler_wherever_one_is_chosen():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    points = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.2 - 0.6
    model = mixture_oracle(d, points)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = sample(model, d, x_T, sampler="dpmpp2m", steps=8, precision="bf16")
    assert out.dtype == torch.float32 and out.abs().max() <= 1
    assert torch.allclose(out, sample(model, d, x_T, sampler="dpmpp2m", steps=8), atol=0.05)  # bf16 net, fp32 steps
    assert EvalConfig(sampler="dpmpp2m").validate().sampler == "dpmpp2m"
