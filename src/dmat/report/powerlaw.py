"""The power law of the scaling section, L(N) = L_inf + a * N^-alpha, fitted with calibrated intervals.

The fit: for every exponent of a log grid over ALPHA_BOUNDS (then a finer grid around the best, then the vertex of a
parabola through the best three), L is linear in (L_inf, a), so its least squares are closed form (with a >= 0, and L_inf >= 0 for a quality that is >= 0, e.g. FID; twice the lowest value for KID,
which its noise can make negative); the exponent with the least residual wins. Vectorised over the grid and over
resamples at once, so thousands of refits cost milliseconds. A fit fails when the quality does not fall with size
(a = 0) or the exponent ends on a bound.

The intervals: a parametric bootstrap. Each resample draws a noise sd from the residuals' own uncertainty (s^2 x df /
chi^2_df, df = runs - 3: with few runs, the t-like tails an estimated sd needs), then every run's value anew around the
fitted law with that sd, and refits. Where "the size needed" is asked against a target with its own uncertainty (the
teacher's sd over draws or seeds), each resample draws the target too. In simulation with known laws
(tests/test_scaling.py: noise of one sd at every size) the 95% intervals of alpha, L_inf and the size needed hold the
truth in 92-98% of studies at 1 and at 3 seeds per size, inside the sizes measured and extrapolating 1.5x; the
nonparametric bootstrap they replace held it in 80-90%, and 48% for the size needed once the teacher's noise counted.
The noise model is one sd for every run: with noise proportional to the value (3% of it), the size needed still holds
the truth in 99% and L_inf in 95%, but alpha in only 85-90%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIZES = 4
BOOTSTRAP = 400
ALPHA_BOUNDS = (1e-3, 5.0)
ALPHA_GRID = np.geomspace(*ALPHA_BOUNDS, 150)  # 6% apart, then FINE exponents 0.5% apart around the best
FINE = 25
LEVEL = 95  # percent, of every interval
TAILS = ((100 - LEVEL) / 2, (100 + LEVEL) / 2)


def power_law(n, l_inf, a, alpha):
    """L(N) = L_inf + a * N^-alpha, with N in units of the largest fitted N (so a is on the scale of L)."""
    return l_inf + a * np.power(n, -alpha)


def size_reaching(target, l_inf, a, alpha):
    """N (in the fit's unit) with L(N) = target; inf when L never gets down to target; elementwise."""
    target, l_inf, a, alpha = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (target, l_inf, a, alpha)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = np.where(target <= l_inf, np.inf, np.where(a > 0, (a / (target - l_inf)) ** (1 / alpha), 0.0))
    return n if n.ndim else float(n)


def _least_squares(u: np.ndarray, ys: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, ...]:
    """(l_inf, a, residual sum of squares) of each row of `ys` (resamples x runs) at each of its exponents `alphas`
    (resamples x exponents, or 1 x exponents for all rows): closed-form least squares with a >= 0 and l_inf >= twice
    the row's minimum or 0."""
    z = np.exp(-alphas[..., None] * np.log(u))  # (resamples or 1) x exponents x runs

    def dot(m, v):  # sum over runs of m (.. x exponents x runs) times v (resamples x runs)
        return np.matmul(m, v[..., None])[..., 0]

    z_mean, y_mean = z.mean(-1), ys.mean(-1, keepdims=True)
    zc, yc = z - z_mean[..., None], ys - y_mean
    szz, szy = (zc ** 2).sum(-1), dot(zc, yc)
    a = np.maximum(szy / szz, 0.0)
    l_inf = y_mean - a * z_mean
    rss = (yc ** 2).sum(-1, keepdims=True) - a * szy
    low = 2 * np.minimum(ys.min(-1, keepdims=True), 0.0)  # a quality >= 0 has a floor >= 0
    under = l_inf < low
    if under.any():  # the floor at its bound: a by least squares of (y - low) on z alone
        zy, zz = dot(z, ys) - low * z.sum(-1), (z ** 2).sum(-1)
        a_low = np.maximum(zy / zz, 0.0)
        rss_low = ((ys - low) ** 2).sum(-1, keepdims=True) - 2 * a_low * zy + a_low ** 2 * zz
        l_inf, a, rss = np.where(under, low, l_inf), np.where(under, a_low, a), np.where(under, rss_low, rss)
    return l_inf, a, rss


def profile_fit(u: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(l_inf, a, alpha) of each row of `ys` (resamples x runs) at sizes `u`, by least squares over ALPHA_GRID, then
    a finer grid around each row's best; a row is NaN where the fit finds no fall with size or its exponent is at a
    bound."""
    ys = np.atleast_2d(ys)
    rows = np.arange(len(ys))
    best = _least_squares(u, ys, ALPHA_GRID[None, :])[2].argmin(1)
    at_bound = (best == 0) | (best == len(ALPHA_GRID) - 1)
    step = ALPHA_GRID[1] / ALPHA_GRID[0]
    fine = ALPHA_GRID[best][:, None] * step ** np.linspace(-1, 1, FINE)[None, :]
    rss = _least_squares(u, ys, fine)[2]
    k = np.clip(rss.argmin(1), 1, FINE - 2)
    left, mid, right = rss[rows, k - 1], rss[rows, k], rss[rows, k + 1]  # the parabola through them, in log alpha
    curvature = left - 2 * mid + right
    offset = np.where(curvature > 0, 0.5 * (left - right) / np.where(curvature > 0, curvature, 1.0), 0.0)
    alpha = fine[rows, k] * (step ** (2 / (FINE - 1))) ** np.clip(offset, -1, 1)
    l_inf, a, _ = _least_squares(u, ys, alpha[:, None])
    params = np.column_stack([l_inf[:, 0], a[:, 0], alpha])
    bad = at_bound | (params[:, 1] <= 1e-9 * np.maximum(np.abs(ys).max(1), 1e-12))
    params[bad] = np.nan
    return params


@dataclass
class Fit:
    """A fitted law with its bootstrap resamples, or `problem` (why there is none)."""

    x_unit: float = np.nan
    l_inf: float = np.nan
    a: float = np.nan
    alpha: float = np.nan
    alpha_ci: tuple[float, float] = (np.nan, np.nan)
    l_inf_ci: tuple[float, float] = (np.nan, np.nan)
    curves: np.ndarray | None = None  # bootstrap fits' (l_inf, a, alpha), one row each
    sizes: int = 0
    points: int = 0
    problem: str | None = None
    x_range: tuple[float, float] = (np.nan, np.nan)  # the smallest and largest size measured
    seed: int = 0

    def predict(self, x) -> np.ndarray:
        return power_law(np.asarray(x, dtype=float) / self.x_unit, self.l_inf, self.a, self.alpha)

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The pointwise 95% bootstrap band of the fitted curve at `x`."""
        u = np.asarray(x, dtype=float) / self.x_unit
        values = np.array([power_law(u, *row) for row in self.curves])
        return tuple(np.percentile(values, TAILS, axis=0))

    def needed(self, target: float) -> float:
        """The N at which the law reaches `target` (inf when its floor L_inf is at or above it)."""
        return size_reaching(target, self.l_inf, self.a, self.alpha) * self.x_unit


def _problem(sizes: int, points: int, text: str) -> Fit:
    return Fit(sizes=sizes, points=points, problem=text)


def fit_law(x, y, seed: int = 0, bootstrap: int = BOOTSTRAP) -> Fit:
    """Fit L(N) to the points (x = N, y = L; one per run) and bootstrap it (parametric: see the module)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    sizes = len(np.unique(x))
    if sizes < MIN_SIZES:
        return _problem(sizes, len(x), f"{sizes} distinct size{'' if sizes == 1 else 's'}; a fit of three "
                                       f"parameters needs at least {MIN_SIZES}")
    unit = float(x.max())
    u = x / unit
    best = profile_fit(u, y)[0]
    if np.isnan(best).any():
        return _problem(sizes, len(x), "the least-squares fit did not converge, found no fall with size, or its "
                                       f"exponent ran to a bound of {ALPHA_BOUNDS}")
    df = len(x) - 3
    s = np.sqrt(np.sum((y - power_law(u, *best)) ** 2) / df)
    rng = np.random.default_rng(seed)
    sd = s * np.sqrt(df / rng.chisquare(df, bootstrap))
    curves = profile_fit(u, power_law(u, *best)[None, :] + sd[:, None] * rng.standard_normal((bootstrap, len(x))))
    curves = curves[~np.isnan(curves).any(1)]
    if len(curves) < bootstrap / 2:
        return _problem(sizes, len(x), f"only {len(curves)} of {bootstrap} bootstrap fits converged")
    return Fit(unit, *best, alpha_ci=tuple(np.percentile(curves[:, 2], TAILS)),
               l_inf_ci=tuple(np.percentile(curves[:, 0], TAILS)), curves=curves, sizes=sizes, points=len(x),
               x_range=(float(x.min()), unit), seed=seed)


def needed_interval(fit: Fit, target: float, target_sd: float = 0.0) -> tuple[float, float, float, float]:
    """The N reaching `target`: the fit's, its 95% bootstrap interval, and the share of resamples that never reach it.
    `target_sd`: the target's own sd (e.g. 1.1 x the teacher's sd), drawn anew in each resample."""
    rng = np.random.default_rng(fit.seed + 1)
    targets = target + (target_sd if np.isfinite(target_sd) else 0.0) * rng.standard_normal(len(fit.curves))
    values = np.sort(size_reaching(targets, *fit.curves.T)) * fit.x_unit  # "never" (inf) sorts last
    last = len(values) - 1
    low, high = values[int(np.floor(last * TAILS[0] / 100))], values[int(np.ceil(last * TAILS[1] / 100))]
    return fit.needed(target), low, high, float(np.mean(~np.isfinite(values)))
