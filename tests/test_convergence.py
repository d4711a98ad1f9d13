"""`still_improving` on simulated validation curves with noise: converged ones (flat, or an exponential plateau still
falling 0-0.2% over the last tenth) are rarely flagged, clearly unconverged ones (falling 1.5-5% per tenth) rarely
missed."""

from __future__ import annotations

import numpy as np
import pytest

from dmat.training.convergence import still_improving

CURVES = 200


def _curves(kind: str, epochs: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """CURVES validation curves of `kind`, ending at 1, with relative Gaussian noise `noise` per epoch."""
    t, tenth = np.arange(1, epochs + 1), max(1, epochs // 10)
    if kind == "flat":
        base = np.ones((CURVES, epochs))
    else:  # an exponential whose fall over the last tenth is `fall` of its end value
        fall = rng.uniform(0, 0.002, CURVES) if kind == "plateau" else rng.uniform(0.015, 0.05, CURVES)
        tau = epochs / rng.uniform(3, 8, CURVES) if kind == "plateau" else epochs * rng.uniform(0.5, 3, CURVES)
        e = np.exp(-t / tau[:, None])
        base = 1 + e * (fall / (e[:, -tenth - 1] - e[:, -1]))[:, None]
    base = base / base[:, -1:]
    return base * (1 + noise * rng.normal(size=base.shape))


def _flagged(kind: str, epochs: int, noise: float) -> float:
    rng = np.random.default_rng(epochs * 1000 + int(noise * 1e4))
    return float(np.mean([still_improving(curve) for curve in _curves(kind, epochs, noise, rng)]))


@pytest.mark.parametrize("epochs", [10, 20, 50, 100])
def test_converged_curves_are_rarely_flagged_and_unconverged_ones_rarely_missed(epochs):
    for noise, false_alarm, miss in ((0.005, 0.08, 0.05), (0.01, 0.15, 0.15)):
        assert _flagged("flat", epochs, noise) <= false_alarm
        assert _flagged("plateau", epochs, noise) <= false_alarm
        assert 1 - _flagged("falling", epochs, noise) <= miss


def test_the_old_rule_would_have_failed_here():
    """Best epoch in the last tenth (the rule before): a smooth plateau falling 0.1% per tenth was always flagged."""
    t = np.arange(1, 51)
    smooth = 1 + 0.001 * np.exp(-(t - 45) / 10)  # falls about 0.04% over the last 5 epochs, no noise
    assert np.argmin(smooth) == 49 and not still_improving(smooth)
    assert still_improving(1 + 0.02 * (50 - t) / 5)  # 2% per tenth, straight down: improving


def test_short_curves_and_edge_cases():
    assert still_improving([3.0, 2.0, 1.0]) and not still_improving([1.0, 2.0, 3.0])  # < 5 epochs: best at the end
    assert not still_improving([]) and not still_improving([1.0] * 10)
    assert still_improving([5.0, 4.0, 3.0, 2.0, 1.0]) and not still_improving([1.0, 2.0, 3.0, 4.0, 5.0])
    assert not still_improving([1.0, np.nan, 1.0, 1.0, 1.0, 1.0])  # a missing epoch is skipped
