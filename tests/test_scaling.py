"""The scaling law's intervals in simulation (known laws, 1 and 3 seeds per size, a teacher with its own noise), and
what its sentences may claim: an extrapolation labelled with its factor, students still improving as a bound."""

from __future__ import annotations

import numpy as np
import pytest

from dmat.report.scaling import Reference, fit_law, law_sentence, needed_interval, needed_sentence, power_law

L_INF, A, ALPHA, UNIT = 0.02, 0.05, 0.6, 1e6  # KID-like: 0.07 at the teacher's 1e6 parameters, 0.66 at 1e4
NOISE, STUDIES, BOOTSTRAP = 0.002, 300, 200  # noise: sd of one run's value (3% of the teacher's)


def _study(rng, seeds: int, largest: float, teacher_sd: float):
    """One simulated study: 6 sizes from 1e4 to `largest`, `seeds` runs each, a teacher of 1e6 measured once with
    sd `teacher_sd`; returns the fit, the teacher's measured value and the true size needed."""
    x = np.repeat(np.geomspace(1e4, largest, 6), seeds)
    y = power_law(x / UNIT, L_INF, A, ALPHA) + NOISE * rng.standard_normal(x.size)
    teacher = L_INF + A
    fit = fit_law(x, y, seed=int(rng.integers(2**31)), bootstrap=BOOTSTRAP)
    truth = UNIT * (A / (1.1 * teacher - L_INF)) ** (1 / ALPHA)  # 763,000: where L = 1.1 x the teacher's
    return fit, teacher + teacher_sd * rng.standard_normal(), truth


@pytest.mark.parametrize("seeds, largest", [(1, 1e6), (3, 1e6), (1, 5e5), (3, 5e5)])
def test_the_95_percent_intervals_hold_the_truth_in_at_least_90_percent_of_simulated_studies(seeds, largest):
    """alpha, L_inf and the size needed (1.5x the largest size measured where largest = 5e5: an extrapolation), the
    teacher's noise included; with its noise left out, the size needed's interval misses far more often."""
    rng, teacher_sd = np.random.default_rng(seeds * 10 + int(largest == 1e6)), 0.003
    held, naive = [], []
    for _ in range(STUDIES):
        fit, teacher, truth = _study(rng, seeds, largest, teacher_sd)
        assert fit.problem is None
        _, low, high, _ = needed_interval(fit, 1.1 * teacher, 1.1 * teacher_sd)
        _, naive_low, naive_high, _ = needed_interval(fit, 1.1 * teacher)
        held.append((fit.alpha_ci[0] <= ALPHA <= fit.alpha_ci[1], fit.l_inf_ci[0] <= L_INF <= fit.l_inf_ci[1],
                     low <= truth <= high))
        naive.append(naive_low <= truth <= naive_high)
    coverage = np.mean(held, axis=0)
    assert (coverage >= 0.90).all(), coverage
    assert np.mean(naive) <= coverage[2] - 0.08  # the teacher's noise ignored (the report before): far fewer


def test_an_extrapolated_size_needed_is_labelled_with_its_factor_and_not_a_finding():
    rng = np.random.default_rng(5)
    x = np.repeat(np.geomspace(1e4, 2.5e5, 6), 2)
    fit = fit_law(x, power_law(x / UNIT, L_INF, A, ALPHA) + NOISE * rng.standard_normal(x.size))
    sentence = needed_sentence(fit, Reference(L_INF + A, 0.002, UNIT), "KID vs parameters, distill", "parameters")
    point = fit.needed(1.1 * (L_INF + A))
    assert sentence.startswith("KID vs parameters, distill: no student measured is known to come within 10% of the "
                               "teacher's 0.07; the law, extrapolated, puts the size needed at about")
    assert f"an extrapolation: {point / 2.5e5:.1f}x the largest student measured, not a finding." in sentence
    assert "the teacher's sd 0.002 included" in sentence and "from about" not in sentence
    # inside the sizes measured: a plain statement, no extrapolation
    x = np.repeat(np.geomspace(1e4, 1e6, 6), 2)
    fit = fit_law(x, power_law(x / UNIT, L_INF, A, ALPHA) + NOISE * rng.standard_normal(x.size))
    inside = needed_sentence(fit, Reference(L_INF + A, 0.002, UNIT), "KID", "parameters")
    assert inside.startswith("KID: within 10% of the teacher's 0.07 (<= 0.077) from about") and "extrapol" not in inside


def test_students_still_improving_make_the_size_needed_an_upper_bound_in_the_sentence():
    rng = np.random.default_rng(6)
    x = np.repeat(np.geomspace(1e4, 1e6, 6), 2)
    fit = fit_law(x, power_law(x / UNIT, L_INF, A, ALPHA) + NOISE * rng.standard_normal(x.size))
    teacher = Reference(L_INF + A, 0.002, UNIT)
    bound = needed_sentence(fit, teacher, "KID", "parameters", improving=(3, 12))
    assert "from at most about" in bound and bound.endswith(
        "; an upper bound: 3 of 12 student runs were still improving when they stopped.")
    both = needed_sentence(fit, Reference(L_INF + A, 0.002, UNIT, improving=True), "KID", "parameters", (3, 12))
    assert "at most" not in both and "at these training budgets only (the teacher and 3 of 12 student runs" in both
    assert law_sentence(fit, "KID", "parameters", (3, 12)).startswith(
        "KID: at these training budgets (3 of 12 runs still improving when they stopped, so not the law of converged "
        "models), L = ")
    assert law_sentence(fit, "KID", "parameters").startswith("KID: L = ")
    never = needed_sentence(fit, Reference(0.015, 0.0, UNIT), "KID", "parameters", (3, 12))
    assert "no size of this kind comes within 10%" in never and "more training may change this" in never


def test_the_teachers_uncertainty_is_its_sd_over_draws_or_over_its_seeds_mean():
    import pandas as pd

    from dmat.report.scaling import teacher_reference

    one = pd.DataFrame({"method": ["teacher", "distill"], "kid": [0.05, 0.08], "kid_sd": [0.004, 0.01],
                        "num_parameters": [1e6, 2e5], "still_improving": [0.0, 1.0]})
    assert teacher_reference(one, "kid", "num_parameters") == Reference(0.05, 0.004, 1e6, False)
    three = pd.DataFrame({"method": ["teacher"] * 3, "kid": [0.04, 0.05, 0.06], "kid_sd": [0.004] * 3,
                          "num_parameters": [1e6] * 3, "still_improving": [0.0, 1.0, 0.0]})
    reference = teacher_reference(three, "kid", "num_parameters")
    assert np.isclose(reference.sd, 0.01 / np.sqrt(3)) and reference.improving  # one teacher seed still improving
    assert teacher_reference(one, "val_task_loss", "num_parameters").sd == 0.0  # no draws: taken as exact
