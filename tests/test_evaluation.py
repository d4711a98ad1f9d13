"""Evaluation building blocks on small real inputs: FID/KID/PR, trajectories, epsilon errors, cost."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import _end_active_runs, _point_at, tiny_diffusion, tiny_unet

from dmat.config.evaluation import EvalConfig
from dmat.data import load_dataset
from dmat.errors import DmatError
from dmat.evaluation import features, memorisation, quality, timing, trajectories
from dmat.model.diffusion import GaussianDiffusion, sample
from dmat.model.unet import UNet


@pytest.fixture(scope="module")
def digits8() -> torch.Tensor:
    ds = load_dataset("digits", 8, with_held_out=True)  # all 1,797: a pool the tests split themselves
    return torch.stack([ds[i] for i in range(len(ds))])


@pytest.fixture(scope="module")
def extractor(tmp_path_factory) -> features.ClassifierFeatures:
    """A digits classifier trained briefly (a few seconds): features that tell digits apart, as in a study."""
    with pytest.MonkeyPatch.context() as mp:
        _point_at(tmp_path_factory.mktemp("extractor"), mp)
        run_id = features.train_feature_extractor("digits", 8, epochs=3, feature_dim=16)
        _end_active_runs()
        return features.load_feature_extractor(run_id, "digits", 8)


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def _numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 over all pairs (Binkowski et al. 2018)."""
    d, m = a.shape[1], len(a)
    kernel = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = kernel(a, a), kernel(b, b), kernel(a, b)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return float(off(kaa) + off(kbb) - 2 * kab.mean())


@pytest.fixture(scope="module")
def digit_sets(extractor, digits8) -> dict:
    """The digits shuffled into a 1000-image 'train' set and 797 unseen ones, as images and features."""
    order = torch.randperm(len(digits8), generator=torch.Generator().manual_seed(0))
    train, unseen = digits8[order[:1000]], digits8[order[1000:]]
    return {"train": train, "unseen": unseen, "train_f": quality.extract(extractor, train),
            "unseen_f": quality.extract(extractor, unseen)}


def test_fid_and_kid_equal_independent_computations(digit_sets):
    real, fake = digit_sets["train_f"][:500], digit_sets["unseen_f"][:500] + 0.05
    scores = quality.fid_kid(real, fake)
    assert scores["fid"] == pytest.approx(_scipy_frechet(real.numpy(), fake.numpy()), rel=1e-8)
    assert scores["kid"] == pytest.approx(_numpy_kid(real.numpy(), fake.numpy()), rel=1e-8)


def test_matched_n_scores_and_floor_are_means_and_sds_over_the_same_draws(digit_sets):
    ref, gen = digit_sets["train_f"], digit_sets["unseen_f"]
    n, k = quality.matched_n(len(gen), [len(ref)]), 10
    assert n == 500
    scores = quality.matched_scores(gen, ref, n, k, seed=3)
    direct = {"fid": [], "fid_floor": [], "kid": [], "kid_floor": []}
    for d in quality.draws(len(ref), len(gen), n, k, seed=3):
        assert len(d.a) == len(d.b) == len(d.g) == n and not set(d.a.tolist()) & set(d.b.tolist())
        a, b, g = ref[d.a].numpy(), ref[d.b].numpy(), gen[d.g].numpy()
        direct["fid"].append(_scipy_frechet(b, g))
        direct["fid_floor"].append(_scipy_frechet(a, b))
        direct["kid"].append(_numpy_kid(b, g))
        direct["kid_floor"].append(_numpy_kid(a, b))
    for name, values in direct.items():
        assert scores[name] == pytest.approx(np.mean(values), rel=1e-6, abs=1e-12)
        assert scores[f"{name}_sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-6, abs=1e-12)
    assert quality.matched_scores(gen, ref, n, k, seed=3) == scores  # the seed fixes the draws


def _within_floor(scores: dict, metric: str, spread: float = 2.0) -> bool:
    return abs(scores[metric] - scores[f"{metric}_floor"]) <= spread * scores[f"{metric}_floor_sd"]


def test_perfect_generator_is_inside_the_floor_spread_and_noise_far_above(digit_sets, extractor):
    ref = digit_sets["train_f"]
    perfect = quality.matched_scores(digit_sets["unseen_f"], ref, 400, 10, seed=0)  # real images the reference lacks
    assert _within_floor(perfect, "kid") and _within_floor(perfect, "fid")
    noise = quality.extract(extractor, torch.rand(800, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    bad = quality.matched_scores(noise, ref, 400, 10, seed=0)
    assert bad["kid"] > bad["kid_floor"] + 50 * bad["kid_floor_sd"]
    assert bad["fid"] > bad["fid_floor"] + 50 * bad["fid_floor_sd"]


def test_memoriser_is_flagged_and_scores_worse_against_held_out_than_train(digit_sets, extractor):
    train, unseen = digit_sets["train"], digit_sets["unseen"]
    copies = (train + 0.01 * torch.randn(train.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    refs = {"train": digit_sets["train_f"], "heldout": digit_sets["unseen_f"]}
    copy_f = quality.extract(extractor, copies)
    n = quality.matched_n(len(copies), [1000, 797])
    floors = {name: quality.summarised(quality.floor_values(f, n, 10, 0)) for name, f in refs.items()}
    scores = quality.quality_metrics(copy_f, refs, "heldout", n, 10, 0, floors)
    assert scores["quality_n"] == 398 and scores["kid"] == scores["kid_heldout"]
    assert scores["kid_heldout"] > scores["kid_train"]
    assert scores["fid_heldout"] > scores["fid_train"] and scores["fid_train"] < scores["fid_floor_train"]

    def rates(generated, generated_f):
        found = memorisation.memorisation({"generated": generated, "train": train, "held_out": unseen[:400]},
                                          {"generated": generated_f, "train": digit_sets["train_f"],
                                           "held_out": digit_sets["unseen_f"][:400]})
        return found

    copier = rates(copies, copy_f)
    honest = rates(unseen[400:], digit_sets["unseen_f"][400:])  # real images it never saw: chance level
    assert copier.metrics["copy_rate_pixel"] > 0.95 and copier.metrics["copy_rate_feature"] > 0.5
    assert honest.metrics["copy_rate_pixel"] < 0.05 and honest.metrics["copy_rate_feature"] < 0.05
    shown = copier.most_copied
    assert shown["samples"].shape == shown["neighbours"].shape == (memorisation.MOST_COPIED, 1, 8, 8)
    assert np.all(np.diff(shown["distances"]) >= 0) and shown["distances"][-1] < shown["threshold"]


def test_too_few_samples_is_a_clear_error(digit_sets):
    with pytest.raises(DmatError, match="more samples than feature dimensions"):
        quality.fid_kid(digit_sets["train_f"], digit_sets["train_f"][:16])
    with pytest.raises(DmatError, match="a draw of N=600 needs 1200 reference"):
        quality.draws(1000, 2000, 600, 10, 0)


def test_nearest_neighbours_equal_a_brute_force_search():
    a = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    b = torch.randn(70, 3, generator=torch.Generator().manual_seed(1))
    dist, index = memorisation.nearest(a, b, chunk=7)  # 10 chunks of the reference
    brute = ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()
    assert torch.equal(index, brute.argmin(1)) and torch.allclose(dist.float(), brute.min(1).values, atol=1e-6)


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


def test_trajectory_means_leave_out_the_shared_starting_noise():
    diffusion = GaussianDiffusion(tiny_diffusion())
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    own, other = (trajectories.record(_tiny_model(seed), diffusion, x_T, "ddim", 1, seed=7) for seed in (0, 1))
    vs = trajectories.compare(own, other)
    assert len(vs["traj_mse"]) == 2 and vs["traj_mse"][0] == 0.0  # x_T, then the one sampling step
    assert vs["traj_mse_mean"] == vs["final_mse"] == vs["traj_mse"][1] > 0  # step 0 would halve it
    assert vs["traj_cosine_mean"] == vs["traj_cosine"][1] < 1


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
    """The median of known sleeps, the warm-up left out; the peak memory of a fresh process grows by a known
    allocation (a process of its own: this one's peak may already lie above anything the test allocates)."""
    import shlex
    import subprocess
    import sys
    import time

    naps = iter([0.3, 0.02, 0.03, 0.08])  # a slow first (warm-up) call, then three timed ones: median 0.03 s

    def nap():
        time.sleep(next(naps))

    seconds = timing.median_seconds(nap, torch.device("cpu"), repeats=3, warmup=1)
    assert 0.03 <= seconds < 0.05  # with the warm-up timed too, the median would be 0.055 s
    code = ("import torch; from dmat.evaluation import timing; cpu = torch.device('cpu'); "
            "before = timing.peak_memory_mb(cpu); x = torch.ones(256 * 2**20 // 4); "
            "print(timing.peak_memory_mb(cpu) - before)")
    # started by a shell that forks it: a process exec'd straight from this one would inherit this one's peak
    grown = subprocess.run(["sh", "-c", f"{shlex.join([sys.executable, '-c', code])}; exit $?"], capture_output=True,
                           text=True, check=True)
    assert 240 <= float(grown.stdout.split()[-1]) < 400  # 256 MiB of float32 ones, touched


@pytest.mark.parametrize("bad, message", [
    (dict(num_samples=0), "num-samples must be a positive"),
    (dict(sampler="euler"), "sampler must be one of ddim, ddpm, dpmpp2m"),
    (dict(features="clip"), "features must be classifier or inception"),
    (dict(steps="many"), "steps must be a positive integer or 'student'"),
    (dict(floor_draws=1), "floor-draws must be at least 2"),
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
