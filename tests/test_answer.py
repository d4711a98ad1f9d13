"""The answer names a size without selection bias (fixed-sequence testing from the largest size down) and only where
both feature spaces agree (report/answer.py), on hand-made evaluation tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmat.report.answer import answer, near_teacher

TRUE_RATIOS = {0.2: 1.6, 0.3: 1.25, 0.4: 1.13, 0.5: 1.09, 0.6: 1.04, 0.8: 1.01, 1.0: 1.0}  # falls with size


def _evaluations(kids: dict[float, list[float]], teacher: list[float], classifier: dict | None = None,
                 sd: float = 0.0) -> pd.DataFrame:
    """Evaluation rows: the teacher's seeds, then a distilled student's seeds per size (KID; the classifier's too)."""
    rows = [("teacher", 1.0, seed, kid) for seed, kid in enumerate(teacher)]
    rows += [("distill", size, seed, kid) for size, values in kids.items() for seed, kid in enumerate(values)]
    frame = pd.DataFrame(rows, columns=["method", "size_factor", "model_seed", "kid"]).assign(kid_sd=sd)
    if classifier is not None:
        frame["kid_classifier"] = list(teacher) + [kid for values in classifier.values() for kid in values]
    return frame


def test_a_size_after_one_that_fails_is_never_named_however_good_its_mean():
    """0.8 is shown within, 0.5 is not; 0.3 happens to look as good as the teacher: the sequence stopped at 0.5."""
    kids = {1.0: [1.0, 1.01, 0.99], 0.8: [1.02, 1.03, 1.01], 0.5: [1.05, 1.4, 0.9], 0.3: [1.0, 1.01, 1.02]}
    near = near_teacher(_evaluations(kids, [1.0, 1.0]), "kid")[0][0]
    assert near.shown.size == 0.8 and near.by_mean.size == 0.3
    text = answer(_evaluations(kids, [1.0, 1.0]))
    assert "By KID, the smallest student shown within 10% of the teacher is size 0.8 (distill)" in text
    assert ("by its mean alone size 0.3 comes within 10% too (1.01x the teacher's), but size 0.5 above it is not shown "
            "within, and sizes are read from the largest down") in text


def test_the_verdict_needs_both_feature_spaces_and_says_which_sees_what():
    kids = {1.0: [1.0, 1.01, 0.99], 0.5: [1.02, 1.03, 1.01]}
    agree = answer(_evaluations(kids, [1.0, 1.0], classifier=kids))
    assert agree.startswith("The answer: In both feature spaces, the smallest student shown within 10% of the "
                            "teacher's KID is size 0.5 (distill).")
    dropped = {1.0: [1.0, 1.01, 0.99], 0.5: [3.0, 3.2, 2.9]}  # e.g. classes missing: the classifier sees it
    split = answer(_evaluations(kids, [1.0, 1.0], classifier=dropped))
    assert "In both feature spaces, the smallest student shown within 10% of the teacher's KID is size 1 " in split
    assert ("The feature spaces disagree on distill: the random CNN's KID shows size 0.5 within 10%, the "
            "classifier's shows no size within") not in split  # 1.0 is shown in both: a size both agree on exists
    none = {1.0: [3.0, 3.1, 2.9], 0.5: [3.0, 3.2, 2.9]}
    apart = answer(_evaluations(kids, [1.0, 1.0], classifier=none))
    assert "No student size is shown within 10% of the teacher's KID in both feature spaces." in apart
    assert ("The feature spaces disagree on distill: the random CNN's KID shows size 0.5 within 10%, the "
            "classifier's shows no size within") in apart
    assert answer(_evaluations(kids, [1.0, 1.0])).startswith("The answer: Only the random-CNN features scored")


def test_one_run_a_side_without_a_spread_prints_no_nan():
    text = answer(_evaluations({0.5: [1.05]}, [1.0], sd=np.nan))
    assert "nan" not in text and "with no interval (no spread known)" in text


def test_in_simulated_studies_the_named_size_is_truly_outside_10_percent_at_most_one_time_in_ten():
    """Sizes around the threshold with 3% seed noise, 3 seeds each and a teacher of 2: the named size's true ratio exceeds 1.1 in at
    most 10% of studies; naming the smallest size by its mean (the old rule) does so far more often."""
    rng = np.random.default_rng(0)
    wrong = biased = named = 0
    for _ in range(200):
        kids = {size: list(ratio * (1 + 0.03 * rng.standard_normal(3))) for size, ratio in TRUE_RATIOS.items()}
        near = near_teacher(_evaluations(kids, list(1 + 0.03 * rng.standard_normal(2))), "kid")[0][0]
        named += near.shown is not None
        wrong += near.shown is not None and TRUE_RATIOS[near.shown.size] > 1.1
        biased += near.by_mean is not None and TRUE_RATIOS[near.by_mean.size] > 1.1
    assert named > 100  # it does name a size, most of the time
    assert wrong / 200 <= 0.10 < biased / 200


def test_a_pruned_students_training_compute_counts_the_teachers_training_it_inherited():
    from dmat.report.answer import compute_sentence

    frame = _evaluations({1.0: [1.0, 1.0], 0.5: [1.02, 1.01]}, [1.0, 1.0]).assign(
        train_flops=[100.0, 100.0, 20.0, 20.0, 10.0, 10.0], epochs_run=[100.0, 100.0, 30.0, 30.0, 30.0, 30.0])
    pruned = frame.assign(init=["random", "random", "pruned", "pruned", "pruned", "pruned"])
    near = min(near_teacher(pruned, "kid")[0], key=lambda n: n.named.size)
    text = compute_sentence(near, None)
    assert "10% of the teacher's 100 over 100" in text and "inherited by its pruned start, 110%" in text
    random_start = min(near_teacher(frame, "kid")[0], key=lambda n: n.named.size)
    assert "inherited" not in compute_sentence(random_start, None)


def _ratio_coverage(seed_to_draws: float, studies: int = 300) -> float:
    """Share of 95% ratio intervals covering the true ratio: a teacher trained once, students with 3 seeds at four
    sizes, every run's KID off its model's truth by its training seed (sd = seed_to_draws x the draws' sd)."""
    rng = np.random.default_rng(1)
    truths, draws_sd, covered, total = {0.25: 1.3, 0.5: 1.1, 0.75: 1.05, 1.0: 1.0}, 0.02, 0, 0
    for _ in range(studies):
        kids = {size: list(ratio + seed_to_draws * draws_sd * rng.standard_normal(3)) for size, ratio in truths.items()}
        teacher = [1.0 + seed_to_draws * draws_sd * rng.standard_normal()]
        frame = _evaluations(kids, teacher).assign(kid_sd=draws_sd * (1 + 0.1 * rng.standard_normal(13)))
        for size in near_teacher(frame, "kid")[0][0].sizes:
            covered += size.ratio[1] <= truths[size.size] <= size.ratio[2]
            total += 1
    return covered / total


def test_a_teacher_trained_once_carries_the_run_to_run_spread_the_students_seeds_measure(monkeypatch):
    """The seed spread twice the draws' (issue 32): with the teacher's draws sd alone, its ratio intervals cover far
    less than 95%; widened by the students' pooled seed-to-draws ratio, at least 93%."""
    from dmat.report import answer as module

    assert _ratio_coverage(2.0) >= 0.93
    monkeypatch.setattr(module.SeedSpread, "of", classmethod(lambda cls, rows, metric: None))
    assert _ratio_coverage(2.0) < 0.90


def test_the_seed_to_draws_ratio_is_pooled_over_the_models_with_several_seeds():
    from dmat.report.answer import SeedSpread

    frame = _evaluations({0.5: [1.0, 1.2], 0.8: [1.0, 1.0, 1.3]}, [1.0], sd=0.1)
    spread = SeedSpread.of(frame.assign(init="random", image_size=16, epochs=0, train_precision="fp32",
                                        sampling_precision="fp32"), "kid")
    var = (1 * np.var([1.0, 1.2], ddof=1) + 2 * np.var([1.0, 1.0, 1.3], ddof=1)) / 3
    assert spread.df == 3 and np.isclose(spread.ratio, np.sqrt(var) / 0.1)
