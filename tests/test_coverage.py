"""The class-coverage score (evaluation/coverage.py) on the digits' real held-out labels: a generator whose class mix
is the data's is inside the floor, one that makes only half the classes is far outside it and its missing classes
are named -- what the random-CNN KID missed on mnist5k (issue 32)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmat.evaluation import coverage
from dmat.evaluation.sensitivity import held_out_with_labels


@pytest.fixture(scope="module")
def real_labels() -> np.ndarray:
    return held_out_with_labels("digits", 8)[1].numpy()


def _z(scores: dict) -> float:
    return (scores["class_tv"] - scores["class_tv_floor"]) / scores["class_tv_floor_sd"]


def test_a_generator_with_the_real_class_mix_is_inside_the_floor_in_most_seeds(real_labels):
    inside = []
    for seed in range(20):  # a perfect generator: labels drawn from the real mix, 1,000 of them
        generated = np.random.default_rng(100 + seed).choice(real_labels, 1000)
        scores, missing = coverage.class_coverage(generated, real_labels, 10, n=150, seed=seed)
        inside.append(abs(_z(scores)) <= 2)
        assert missing == [] and scores["classes_missing"] == 0
    assert sum(inside) >= 19


def test_a_generator_of_digits_0_to_4_is_far_outside_the_floor_and_its_missing_classes_are_named(real_labels):
    rng = np.random.default_rng(0)
    generated = rng.choice(real_labels[real_labels < 5], 1000)
    scores, missing = coverage.class_coverage(generated, real_labels, 10, n=150, seed=0)
    assert missing == [5, 6, 7, 8, 9] and scores["classes_missing"] == 5
    assert scores["class_tv"] > 0.4 and _z(scores) > 10  # about half the mass is in the wrong classes
    # one class of ten gone: about 0.1 of the mass, within the sampling noise of N = 150 a side (z about 1), so the
    # distance alone does not show it at this N; the missing class is named all the same
    dropped_one = rng.choice(real_labels[real_labels != 3], 1000)
    scores, missing = coverage.class_coverage(dropped_one, real_labels, 10, n=150, seed=0)
    assert missing == [3] and scores["class_tv"] > scores["class_tv_floor"]


def test_too_few_real_labels_for_two_halves_are_refused(real_labels):
    with pytest.raises(ValueError, match="needs"):
        coverage.class_coverage(real_labels, real_labels, 10, n=len(real_labels))


def test_the_report_never_calls_a_model_missing_classes_inside_the_floor_and_names_its_classes(real_labels):
    """Through the report's verdicts: two models whose KID is inside both floors; the one that draws digits 0-4 only
    (its coverage scored from real labels) is not called inside the floor, and the class mix names what it misses."""
    from dmat.report.realness import class_mix, floor_comparison

    rng = np.random.default_rng(1)

    def evaluation(size: float, generated: np.ndarray) -> dict:
        scores, missing = coverage.class_coverage(generated, real_labels, 10, n=150)
        return dict(method="distill", init="pruned", size_factor=size, quality_n=150, kid=0.001, kid_floor=0.0,
                    kid_floor_sd=0.01, kid_classifier=0.001, kid_classifier_floor=0.0, kid_classifier_floor_sd=0.01,
                    missing_classes=",".join(map(str, missing)), **scores)

    frame = pd.DataFrame([evaluation(1.0, rng.choice(real_labels, 1000)),
                          evaluation(0.5, rng.choice(real_labels[real_labels < 5], 1000))])
    verdicts = floor_comparison(frame)
    assert verdicts[0].endswith("a side): size 1 distill, pruned init.")
    assert verdicts[-1] == ("KID inside both floors, but classes missing from its samples (see the class mix): "
                            "size 0.5 distill, pruned init.")
    mix = class_mix(frame)
    assert mix[0].startswith("Class mix other than the real one") and "size 1 " not in mix[0] and "size 0.5" in mix[0]
    assert mix[1].endswith("size 0.5 distill, pruned init: 5 (1 of 1), 6 (1 of 1), 7 (1 of 1), 8 (1 of 1), 9 (1 of 1).")
    assert class_mix(frame.iloc[:1]) == [
        "Class mix: every model draws the classes as the real images do (class-mix distance within 2 sd of its "
        "real-vs-real floor, no class missing)."]
