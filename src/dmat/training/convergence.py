"""Whether a model was still improving when its training stopped, from its per-epoch validation losses.

The rule (a plateau test on the slope of the last epochs, against its noise, with a threshold on the size of the
gain): take the last WINDOW_SHARE of the epochs run (at least MIN_WINDOW epochs), fit a straight line to their
validation losses by least squares, and call the model still improving when both

- the fall is real: the slope is negative with a one-sided t-test at level 1 - SIGNIFICANCE (its standard error
  from the residuals of the line, n - 2 degrees of freedom), so noise alone does not flag a flat curve, and
- the fall matters: the fitted gain per tenth of the epochs run, -slope x max(1, epochs / 10), is more than
  MIN_GAIN of the window's mean loss, so a converged curve that still creeps down (0.2% per tenth) is not flagged.

The constants were chosen on simulated curves (tests/test_convergence.py, 200 curves per cell, 10 to 100 epochs):
flat and exponential plateaus falling 0-0.2% over the last tenth are flagged at most 7% of the time with 0.5% noise
per epoch and at most 10.5% with 1% (both worst at 10 epochs; at most 8% from 20 epochs on), curves still falling
1.5-5% per tenth are missed at most 0.5% of the time with 0.5% noise and at most 8.5% with 1%.

With fewer than MIN_WINDOW epochs there is no slope to test: a model is then still improving when its best loss came
at the last epoch. Pure numpy; training/loop.py calls it at the end of each run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

WINDOW_SHARE = 0.3  # the last 30% of the epochs run ...
MIN_WINDOW = 5  # ... and at least 5 epochs
MIN_GAIN = 0.007  # a gain of more than 0.7% of the loss per tenth of the epochs run
SIGNIFICANCE = 0.05  # one-sided test of the slope


def window_of(epochs: int) -> int:
    """How many of the last epochs the rule looks at."""
    return min(epochs, max(MIN_WINDOW, math.ceil(WINDOW_SHARE * epochs)))


def recent_trend(losses) -> tuple[float, float, int]:
    """(relative gain per tenth of the run, t statistic of the fall, window) of the last `window_of` losses: the gain
    is -slope x max(1, epochs / 10) / mean loss, the t statistic -slope / its standard error (inf without noise)."""
    y = np.asarray(losses, dtype=float)
    y = y[np.isfinite(y)]
    n, w = len(y), window_of(len(y))
    y, t = y[len(y) - w:], np.arange(w, dtype=float)
    if w < 3:
        return np.nan, np.nan, w
    centred = t - t.mean()
    slope = float(centred @ (y - y.mean()) / (centred @ centred))
    residuals = y - y.mean() - slope * centred
    se = math.sqrt(float(residuals @ residuals) / (w - 2) / float(centred @ centred))
    t_stat = -slope / se if se > 0 else (math.inf if slope < 0 else 0.0 if slope == 0 else -math.inf)
    return -slope * max(1.0, n / 10) / abs(float(y.mean())), t_stat, w


def still_improving(losses) -> bool:
    """Whether the curve of validation losses (one per epoch, in order) was still falling when it ended, by the rule
    of this module: a significant fall (one-sided t-test at 5% on the least-squares slope of the last 30% of the
    epochs, at least 5) worth more than 0.7% of the loss per tenth of the run. Short curves: best loss at the end.
    """
    y = np.asarray(losses, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) == 0:
        return False
    if len(y) < MIN_WINDOW:
        return bool(np.argmin(y) == len(y) - 1)
    gain, t_stat, w = recent_trend(y)
    return bool(gain > MIN_GAIN and t_stat > stats.t.ppf(1 - SIGNIFICANCE, w - 2))
