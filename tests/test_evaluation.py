"""Evaluation building blocks on small real inputs: FID/KID/PR, trajectories, epsilon errors, cost."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import tiny_diffusion, tiny_unet

from dmat.data import load_dataset
from dmat.diffusion import GaussianDiffusion, sample
from dmat.errors import DmatError
from dmat.evaluation import cost, features, quality, trajectories
from dmat.evaluation.settings import EvalConfig
from dmat.unet import UNet


@pytest.fixture(scope="module")
def digits8() -> torch.Tensor:
    ds = load_dataset("digits", 8)
    return torch.stack([ds[i] for i in range(len(ds))])


@pytest.fixture(scope="module")
def extractor() -> features.ClassifierFeatures:
    torch.manual_seed(0)
    return features.ClassifierFeatures(features.ExtractorConfig(image_size=8, feature_dim=16)).eval()


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_fid_equals_independent_frechet_distance(extractor, digits8):
    real, fake = digits8[:900], (digits8[900:] + 0.3 * torch.randn_like(digits8[900:])).clamp(-1, 1)
    fid = quality.fid_kid(extractor, real, fake)["fid"]
    expected = _scipy_frechet(quality.extract(extractor, real).numpy(), quality.extract(extractor, fake).numpy())
    assert expected > 0
    assert fid == pytest.approx(expected, rel=1e-3)


def test_real_vs_real_is_near_the_floor_and_noise_far_above(extractor, digits8):
    floor = quality.floor_metrics(extractor, digits8, seed=0)
    other_halves = quality.real_halves(digits8, seed=1)
    real_vs_real = quality.fid_kid(extractor, *other_halves)
    noise = torch.rand_like(digits8) * 2 - 1
    noise_vs_real = quality.fid_kid(extractor, digits8, noise)
    assert real_vs_real["fid"] < 3 * floor["fid_floor"]
    assert noise_vs_real["fid"] > 20 * floor["fid_floor"]
    assert noise_vs_real["kid_mean"] > 20 * abs(floor["kid_floor"])


def test_precision_recall_on_identical_and_disjoint_sets():
    a = torch.randn(200, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert quality.precision_recall(a, a.clone()) == (1.0, 1.0)
    assert quality.precision_recall(a, a + 100.0) == (0.0, 0.0)


def test_too_few_samples_is_a_clear_error(extractor, digits8):
    with pytest.raises(DmatError, match="more samples than feature dimensions"):
        quality.fid_kid(extractor, digits8, digits8[:16])


def _tiny_model(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(tiny_unet(image_size=8, in_channels=1)).eval()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_trajectory_against_itself_is_zero_and_against_another_model_is_not(sampler):
    diffusion = GaussianDiffusion(tiny_diffusion())
    model, other = _tiny_model(0), _tiny_model(1)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    own = trajectories.record(model, diffusion, x_T, sampler, 5, seed=7)
    again = trajectories.record(model, diffusion, x_T, sampler, 5, seed=7)
    self_vs = trajectories.compare(own, again)
    assert self_vs["traj_mse"] == [0.0] * 6 and self_vs["final_mse"] == 0.0
    assert self_vs["traj_cosine"] == pytest.approx([1.0] * 6)
    vs_other = trajectories.compare(own, trajectories.record(other, diffusion, x_T, sampler, 5, seed=7))
    assert vs_other["traj_mse"][0] == 0.0  # the shared starting noise
    assert all(m > 0 for m in vs_other["traj_mse"][1:])
    assert trajectories.path_length(own) > 0


def test_last_recorded_state_is_the_returned_sample():
    diffusion = GaussianDiffusion(tiny_diffusion())
    model = _tiny_model(0)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    traj = trajectories.record(model, diffusion, x_T, "ddpm", 4, seed=3)
    returned = sample(model, diffusion, x_T, "ddpm", 4, generator=torch.Generator().manual_seed(3))
    assert traj.states.shape == (2, 5, 1, 8, 8) and traj.timesteps[-1] == -1
    assert torch.equal(traj.states[:, 0], x_T)
    assert torch.equal(traj.states[:, -1], returned)


def test_eps_errors_against_itself_are_zero_and_against_true_noise_positive(digits8):
    diffusion = GaussianDiffusion(tiny_diffusion())
    model = _tiny_model(0)
    errors = trajectories.eps_errors(model, diffusion, digits8[:40], [0, 10, 19], seed=0, teacher=model,
                                     batch_size=16)
    assert list(errors["eps_mse_teacher"]) == [0, 10, 19]
    assert all(v == 0.0 for v in errors["eps_mse_teacher"].values())
    assert all(v > 0 for v in errors["eps_mse_true"].values())
    assert "eps_mse_teacher" not in trajectories.eps_errors(model, diffusion, digits8[:8], [5], seed=0)


def test_cost_timing_and_memory_are_measured():
    calls = []
    seconds = cost.median_seconds(lambda: calls.append(sum(range(10000))), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds > 0
    assert cost.peak_memory_mb(torch.device("cpu")) > 10


@pytest.mark.parametrize("bad, message", [
    (dict(num_samples=0), "num-samples must be a positive"),
    (dict(sampler="euler"), "sampler must be ddim or ddpm"),
    (dict(features="clip"), "features must be classifier or inception"),
    (dict(steps="many"), "steps must be a positive integer or 'student'"),
])
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(DmatError, match=message):
        EvalConfig(**bad).validate()


def test_steps_student_uses_a_students_own_steps_only():
    cfg = EvalConfig(steps="student")
    assert cfg.resolved_steps("student", {"student_steps": "8"}) == 8
    with pytest.raises(DmatError, match="needs a student run"):
        cfg.resolved_steps("teacher", {})


def _fresh_inception_weights(path) -> dict:
    """The state dict of a freshly initialised torch-fidelity Inception, written where the test says."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Fresh(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    torch.save({}, path)
    state = Fresh("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).state_dict()
    state["fc.bias"] = torch.full_like(state["fc.bias"], 0.25)  # a mark that shows this file was loaded
    torch.save(state, path)
    return state


def test_inception_features_use_the_given_weights_file(tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    state = _fresh_inception_weights(weights)
    monkeypatch.setenv(features.INCEPTION_ENV, str(weights))
    net = features.InceptionFeatures(features.inception_weights_path())
    assert torch.equal(net.net.state_dict()["fc.bias"], state["fc.bias"])
    assert torch.equal(net.net.state_dict()["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    out = net(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


def test_missing_inception_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(DmatError, match=features.INCEPTION_FILE):
        features.inception_weights_path()
    with pytest.raises(DmatError, match="nowhere.pth not found"):
        features.inception_weights_path(str(tmp_path / "nowhere.pth"))
