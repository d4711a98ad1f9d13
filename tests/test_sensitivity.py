"""Scores that see what a person sees, on the real digits at the default 16px and their fixed held-out split:
the sensitivity check (known corruptions scored like a model), and memorisation that cannot pass as quality."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from dmat.config import TrainConfig
from dmat.data import load_splits
from dmat.evaluation import corruptions, memorisation, quality, sensitivity, spaces

N_DRAWS = 10


@pytest.fixture(scope="module")
def digits() -> dict:
    """The evaluation's real sets of a default digits model: its train and validation splits, the held-out 400."""
    images, labels = sensitivity.held_out_with_labels("digits", 16)
    splits = load_splits(TrainConfig())
    stack = lambda ds: torch.stack([ds[i] for i in range(len(ds))])  # noqa: E731
    return {"held_out": images, "labels": labels, "train": stack(splits.train), "val": stack(splits.val)}


@pytest.fixture(scope="module")
def randcnn():
    return spaces.RandomCNNFeatures(1)


def test_the_random_cnn_is_fixed_by_its_seed_and_never_trained(randcnn):
    again = spaces.RandomCNNFeatures(1)
    assert all(torch.equal(a, b) for a, b in zip(randcnn.parameters(), again.parameters()))
    assert not any(p.requires_grad for p in randcnn.parameters())
    assert not torch.equal(next(spaces.RandomCNNFeatures(1, seed=1).parameters()), next(randcnn.parameters()))
    assert randcnn(torch.zeros(3, 1, 16, 16)).shape == (3, spaces.RANDCNN_DIM)
    assert spaces.in_space("kid_floor_sd_heldout", "randcnn") == "kid_randcnn_floor_sd_heldout"
    assert spaces.in_space("quality_n", "randcnn") == "quality_n"


def test_corruptions_keep_the_range_and_level_zero_changes_nothing(digits):
    x, y = digits["held_out"], digits["labels"]
    for kind, levels in corruptions.LEVELS.items():
        changed = corruptions.corrupt(kind, x, y, levels[-1])
        assert changed.shape == x.shape and changed.min() >= -1 and changed.max() <= 1 and not torch.equal(changed, x)
    assert torch.equal(corruptions.corrupt("noise", x, y, 0.0), x)
    mixed_labels = corruptions.corrupt("class_mix", y[:, None, None, None].float(), y, 1.0)
    assert set(mixed_labels.flatten().long().tolist()) == {0, 1, 2, 3, 4}  # the upper half of the classes is gone


def test_class_mix_draws_its_replacements_from_the_train_images_never_from_the_held_out_set_scored_against(digits):
    """The check scores the corrupted held-out half A against the other half B: a replacement copied from B would be
    an exact real image of the reference, and the mix would look better than it is (issue 32)."""
    x, y = digits["held_out"], digits["labels"]
    donors = sensitivity.train_with_labels("digits", 16)
    assert len(donors[0]) == len(donors[1]) == 1397
    mixed = corruptions.corrupt("class_mix", x, y, 1.0, donors=donors)
    replaced = torch.isin(y, torch.arange(5, 10))
    assert replaced.sum() > 150 and torch.equal(mixed[~replaced], x[~replaced])
    flat_held_out = x.flatten(1)
    assert not any(torch.all(flat_held_out == image, dim=1).any() for image in mixed[replaced].flatten(1))
    flat_train = donors[0].flatten(1)
    assert all(torch.all(flat_train == image, dim=1).any() for image in mixed[replaced].flatten(1))


def test_on_digits_the_headline_detects_sigma_0_1_noise_outside_the_floor_spread(digits, randcnn):
    n = quality.matched_n(EvalN := 2000, [len(digits["held_out"]), len(digits["train"])])  # the evaluation's N
    assert n == 200 and EvalN == 2000
    levels = {"noise": (0.0, 0.1), "blur": (0.5,)}
    rows = sensitivity.measure(digits["held_out"], digits["labels"], {spaces.HEADLINE_SPACE: randcnn}, n, N_DRAWS, 0,
                               levels)
    by = {(r["metric"], r["corruption"], r["level"]): r for r in rows}
    for metric in ("kid", "fid"):
        assert by[(metric, "noise", 0.0)]["z"] == 0 and not by[(metric, "noise", 0.0)]["detected"]  # the floor itself
        assert by[(metric, "noise", 0.1)]["detected"] and by[(metric, "noise", 0.1)]["z"] > sensitivity.Z_DETECT
        assert by[(metric, "blur", 0.5)]["detected"]
    smallest = sensitivity.smallest_detected(rows)
    assert smallest["kid"]["noise"] == 0.1
    assert "| kid | 0.1 |" in sensitivity.table_text(smallest, levels)


def _memorisers(train: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Generators that return training images: exact, under sigma 0.2 noise, shifted by one pixel."""
    picked = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:n]]
    return {"exact": picked, "noisy": corruptions.corrupt("noise", picked, None, 0.2, seed=4),
            "shifted": corruptions.corrupt("shift", picked, None, 1, seed=5)}


def test_memorisers_are_flagged_through_noise_and_shifts_and_unseen_real_images_are_not(digits):
    train = digits["train"]
    for name, copies in _memorisers(train, 300).items():
        found = memorisation.copy_test(copies, digits["held_out"], train)[0]
        assert found["copy_rate"] > 0.9 and found["copy_alarm"] == 1.0, name
    honest = memorisation.copy_test(digits["val"], digits["held_out"], train)[0]  # real images no model trained on
    assert honest["copy_rate"] < 2 * memorisation.COPY_QUANTILE and honest["copy_alarm"] == 0.0
    # the shown most-copied samples are the memoriser's, below the threshold
    found = memorisation.memorisation({"generated": _memorisers(train, 300)["shifted"], "train": train,
                                       "held_out": digits["held_out"]},
                                      {k: v.flatten(1)[:, :32].double() for k, v in
                                       (("generated", train[:300]), ("train", train), ("held_out", digits["held_out"]))})
    assert (found.most_copied["distances"] < found.most_copied["threshold"]).all()


@pytest.mark.parametrize("dataset, size", [("digits", 16), ("mnist5k", 28)])
def test_a_two_pixel_shift_memoriser_is_alarmed_and_unseen_images_drawn_like_the_training_ones_are_not(dataset, size):
    """Issue 32: a memoriser returning training images shifted by 2 px (beyond the test's 1-px tolerance) copies at
    about twice chance, which the old 2x-chance rule missed; the validation split (unseen, drawn like the training
    images) must not alarm -- on mnist5k it did score 0.098 when its held-out split was the file's tail."""
    from dmat.data import load_held_out

    splits = load_splits(TrainConfig(dataset=dataset, image_size=size))
    stack = lambda ds: torch.stack([ds[i] for i in range(len(ds))])  # noqa: E731
    train, val, held_out = stack(splits.train), stack(splits.val), stack(load_held_out(dataset, size))
    picked = train[torch.randint(len(train), (1000,), generator=torch.Generator().manual_seed(0))]
    shifted = memorisation.copy_test(torch.roll(picked, shifts=(2, 0), dims=(-2, -1)), held_out, train)[0]
    assert shifted["copy_alarm"] == 1.0 and shifted["copy_p_value"] < 1e-3
    honest = memorisation.copy_test(val, held_out, train)[0]
    assert honest["copy_alarm"] == 0.0 and honest["copy_p_value"] > 0.05


def test_the_copy_alarm_is_calibrated_for_a_model_that_does_not_copy():
    """Exchangeable draws (the generated samples, the held-out images and the training set from one distribution):
    the alarm at p < 0.01 fires about 1% of the time whatever the held-out size, where a binomial test at the
    nominal 5% (which ignores the threshold's own noise) fires in ~14% of such studies with 100 held-out images."""
    generator = torch.Generator().manual_seed(3)
    alarms = 0
    for _ in range(200):
        pool = torch.rand(140 + 100 + 500, 1, 6, 6, generator=generator)
        found = memorisation.copy_test(pool[:500], pool[500:600], pool[600:])[0]
        alarms += found["copy_alarm"]
    assert alarms / 200 <= 0.03


def test_a_memoriser_scores_worse_than_unseen_real_images_in_the_headline_against_held_out(digits, randcnn):
    reference = quality.extract(randcnn, digits["held_out"])
    learned, unseen = digits["train"][:700], digits["train"][700:]  # a model that trained on 700 images; 557 it never saw
    n = quality.matched_n(2000, [len(reference), len(unseen)])  # 200, as the evaluation's

    def scores(images):
        return quality.matched_scores(quality.extract(randcnn, images), reference, n, N_DRAWS, 0)

    honest = scores(unseen)
    assert n == 200 and honest["kid"] < honest["kid_floor"] + sensitivity.Z_DETECT * honest["kid_floor_sd"]
    memorisers = _memorisers(learned, len(unseen))
    for name in ("noisy", "shifted"):
        copied = scores(memorisers[name])
        assert copied["kid"] > honest["kid"] and copied["fid"] > honest["fid"], name
        assert copied["kid"] > copied["kid_floor"] + sensitivity.Z_DETECT * copied["kid_floor_sd"], name


@pytest.mark.slow
def test_the_sensitivity_run_logs_its_table_and_the_report_shows_it(store, tmp_path):
    from dmat.evaluation.features import train_feature_extractor
    from dmat.report import sensitivity as section

    extractor = train_feature_extractor("digits", 8, epochs=1, feature_dim=16)
    run_id = sensitivity.run_sensitivity("digits", 8, num_samples=100, floor_draws=3, device="cpu",
                                         feature_extractor_run_id=extractor)
    run = mlflow.get_run(run_id)
    assert run.data.tags["dmat.role"] == "sensitivity" and run.data.params["quality_n"] == "100"
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=sensitivity.TABLE, dst_path=str(tmp_path))
    table = json.loads(open(path).read())
    assert set(table["smallest"]) == {"fid", "kid", "fid_classifier", "kid_classifier"}
    assert len(table["rows"]) == 4 * sum(len(levels) for levels in corruptions.LEVELS.values())
    [(caption, shown)] = section.sensitivity_tables()
    assert caption.startswith("digits at 8px, N = 100 a side, 3 draws") and list(shown.metric) == list(table["smallest"])
    assert list(shown.columns)[1:] == [f"{k} ({corruptions.UNITS[k]})" for k in corruptions.LEVELS]
