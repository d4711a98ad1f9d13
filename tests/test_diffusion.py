"""The diffusion math: schedules, q_sample statistics, targets and the samplers."""

import math

import pytest
import torch

from dmat.errors import DmatError
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion, make_betas, sample, sample_ddim, sample_ddpm


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_is_monotone_and_valid(schedule):
    betas = make_betas(schedule, 1000)
    assert betas.shape == (1000,)
    assert torch.all(betas > 0) and torch.all(betas < 1)
    abar = torch.cumprod(1 - betas, 0)
    assert torch.all(abar[1:] < abar[:-1]), "alpha_bar must decrease strictly"
    assert abar[0] > 0.99 and abar[-1] < 0.01, "almost clean at t=0, almost pure noise at t=T"


def test_q_sample_has_the_marginal_mean_and_variance():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    x0 = torch.full((20000, 1), 0.7)
    for t in (0, 30, 99):
        tt = torch.full((x0.shape[0],), t)
        x_t = d.q_sample(x0, tt, torch.randn_like(x0))
        abar = d.alphas_cumprod[t].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
        assert x_t.var().item() == pytest.approx(1 - abar, abs=0.03)


def test_v_prediction_converts_back_to_the_true_noise():
    d = GaussianDiffusion(DiffusionConfig(timesteps=50, prediction="v"))
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.randint(0, 50, (8,))
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.eps_from_output(d.target(x0, t, noise), x_t, t), noise, atol=1e-5)


def oracle_for(d: GaussianDiffusion, point: torch.Tensor):
    """The exact eps-predictor for a data distribution concentrated on one image."""

    def model(x_t, t):
        abar = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * point) / (1 - abar).sqrt()

    return model


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
@pytest.mark.parametrize("steps", [1000, 50, 7])
def test_deterministic_samplers_with_the_exact_model_land_on_the_data(steps, sampler):
    d = GaussianDiffusion(DiffusionConfig(timesteps=1000, schedule="linear"))
    point = torch.rand(1, 1, 4, 4) * 1.6 - 0.8
    out = sample(oracle_for(d, point), d, torch.randn(3, 1, 4, 4), sampler=sampler, steps=steps)
    assert torch.allclose(out, point.expand_as(out), atol=1e-4)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    model_t = lambda x, t: model(x)  # noqa: E731
    x_T = torch.randn(2, 1, 4, 4)
    torch.manual_seed(1)
    a = sample_ddim(model_t, d, x_T, steps=10)
    torch.manual_seed(2)
    b = sample_ddim(model_t, d, x_T, steps=10)
    assert torch.equal(a, b)
    c = sample_ddpm(model_t, d, x_T, steps=10, generator=torch.Generator().manual_seed(1))
    e = sample_ddpm(model_t, d, x_T, steps=10, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(c, e)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m"])
def test_callback_sees_the_whole_trajectory_ending_at_the_sample(sampler):
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    model = lambda x, t: 0.1 * x  # noqa: E731
    states, times = [], []
    x_T = torch.randn(2, 1, 4, 4)
    out = sample(model, d, x_T, sampler=sampler, steps=12,
                 callback=lambda i, t, x: (states.append(x.clone()), times.append(t)),
                 generator=torch.Generator().manual_seed(0))
    assert len(states) == 13
    assert torch.equal(states[0], x_T) and torch.equal(states[-1], out)
    assert times[0] == 99 and times[-1] == -1


def test_sampling_timesteps_cover_the_range_and_reject_bad_counts():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    taus = d.sampling_timesteps(10)
    assert taus[0] == 99 and taus[-1] == 0 and len(taus) == 10 and taus == sorted(taus, reverse=True)
    assert len(d.sampling_timesteps(100)) == 100
    with pytest.raises(DmatError, match="between 1 and timesteps=100"):
        d.sampling_timesteps(101)


def test_bad_diffusion_config_is_a_clear_error():
    with pytest.raises(DmatError, match="schedule"):
        GaussianDiffusion(DiffusionConfig(schedule="quadratic"))
    with pytest.raises(DmatError, match="timesteps"):
        GaussianDiffusion(DiffusionConfig(timesteps=1))


@pytest.mark.parametrize("timesteps", [5, 19, 20])
def test_linear_schedule_with_too_few_timesteps_is_refused(timesteps):
    assert make_betas("linear", timesteps).max() >= 1 - 1e-12  # what it would be: beta_T >= 1, 1 - beta_T <= 0
    with pytest.raises(DmatError, match=f"schedule linear with timesteps={timesteps} .* use timesteps > 20"):
        DiffusionConfig(timesteps=timesteps, schedule="linear").validate()
    abar = GaussianDiffusion(DiffusionConfig(timesteps=21, schedule="linear")).alphas_cumprod
    assert 0 < abar[-1] < abar[0] < 1  # the smallest T it accepts is a valid process


def test_linear_schedule_check_runs_before_the_teacher_run_exists(store):
    import mlflow
    from click.testing import CliRunner

    from dmat.cli.main import cli

    result = CliRunner().invoke(cli, ["teacher", "--schedule", "linear", "--timesteps", "20", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and "schedule linear with timesteps=20" in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty
