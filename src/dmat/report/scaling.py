"""Scaling-law fit of the report: quality against model size, L(N) = L_inf + a * N^-alpha.

N is the parameter count or the FLOPs of one forward pass; L is KID, FID or the validation task loss
(lower is better). One fit per student method, init, resolution and training budget (epochs), over every run (seed)
of every size: never across resolutions, whose qualities are against real images of different sizes, nor across
budgets, which are other models. The teacher is the reference the sizes are measured against, not a point of the
fit, and only at its own resolution. The intervals are a bootstrap: runs are resampled within each size when some
size has several seeds (the seeds' spread is the uncertainty), else the sizes themselves are resampled. A fit needs
MIN_SIZES distinct sizes (three parameters and at least one degree of freedom) and must converge with its exponent
inside its bounds; otherwise it says why and draws nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from dmat.report.tables import GROUP, KIND, key_text, namer, with_keys

MIN_SIZES = 4
BOOTSTRAP = 200
ALPHA_BOUNDS = (1e-3, 5.0)
WITHIN = 0.10  # "within 10% of the teacher": L <= 1.1 x the teacher's L
LEVEL = 95  # percent, of every bootstrap interval


def power_law(n, l_inf, a, alpha):
    """L(N) = L_inf + a * N^-alpha, with N in units of the largest fitted N (so a is on the scale of L)."""
    return l_inf + a * np.power(n, -alpha)


@dataclass
class Fit:
    """A fitted law with its bootstrap intervals, or `problem` (why there is none)."""

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

    def predict(self, x) -> np.ndarray:
        return power_law(np.asarray(x, dtype=float) / self.x_unit, self.l_inf, self.a, self.alpha)

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The pointwise 95% bootstrap band of the fitted curve at `x`."""
        u = np.asarray(x, dtype=float) / self.x_unit
        values = np.array([power_law(u, *row) for row in self.curves])
        return tuple(np.percentile(values, [(100 - LEVEL) / 2, (100 + LEVEL) / 2], axis=0))

    def needed(self, target: float) -> float:
        """The N at which the law reaches `target` (inf when its floor L_inf is at or above it)."""
        return size_reaching(target, self.l_inf, self.a, self.alpha) * self.x_unit


def size_reaching(target: float, l_inf: float, a: float, alpha: float) -> float:
    """N (in the fit's unit) with L(N) = target; inf when L never gets down to target."""
    if target <= l_inf:
        return np.inf
    return (a / (target - l_inf)) ** (1 / alpha) if a > 0 else 0.0


def _fit_once(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """(l_inf, a, alpha) by least squares, or None when it does not converge, finds no fall with size (a = 0) or
    ends on an exponent bound."""
    low = min(0.0, float(y.min()))  # qualities here are >= 0 (KID up to its noise): the floor is too
    start = (float(y.min()) * 0.5 if y.min() > 0 else low, max(float(y.max() - y.min()), 1e-12), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(power_law, x, y, p0=start, maxfev=5000,
                                  bounds=([low - abs(low), 0.0, ALPHA_BOUNDS[0]], [float(y.min()), np.inf, ALPHA_BOUNDS[1]]))
    except (RuntimeError, ValueError):
        return None
    flat = params[1] <= 1e-9 * max(abs(float(y.max())), 1e-12)  # no fall with size: the exponent means nothing
    if not np.all(np.isfinite(params)) or flat or np.isclose(params[2], ALPHA_BOUNDS, rtol=1e-3).any():
        return None
    return params


def _resample(x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator,
              by_run: bool) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap resample. `by_run`: within each size, its runs drawn with replacement, their deviations from
    the size's mean scaled by sqrt(n / (n - 1)), since the plain draw of n from n runs has only (n - 1) / n of their
    variance (with 3 seeds, intervals some 20% too narrow). Else whole sizes drawn with replacement."""
    if not by_run:
        pick = np.concatenate([groups[i] for i in rng.choice(len(groups), size=len(groups))])
        return x[pick], y[pick]
    ys = []
    for g in groups:
        drawn, mean = y[rng.choice(g, size=len(g))], y[g].mean()
        ys.append(mean + (drawn - mean) * (np.sqrt(len(g) / (len(g) - 1)) if len(g) > 1 else 0.0))
    return np.concatenate([x[g] for g in groups]), np.concatenate(ys)


def fit_law(x, y, seed: int = 0, bootstrap: int = BOOTSTRAP) -> Fit:
    """Fit L(N) to the points (x = N, y = L; one per run) and bootstrap its parameters."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    sizes = np.unique(x)
    if len(sizes) < MIN_SIZES:
        return Fit(sizes=len(sizes), points=len(x), problem=f"{len(sizes)} distinct size{'' if len(sizes) == 1 else 's'}"
                                                            f"; a fit of three parameters needs at least {MIN_SIZES}")
    unit = float(x.max())
    best = _fit_once(x / unit, y)
    if best is None:
        return Fit(sizes=len(sizes), points=len(x), problem="the least-squares fit did not converge, found no fall "
                                                            f"with size, or its exponent ran to a bound of {ALPHA_BOUNDS}")
    groups = [np.flatnonzero(x == s) for s in sizes]
    by_run = max(len(g) for g in groups) > 1
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(bootstrap):
        xs, ys = _resample(x, y, groups, rng, by_run)
        if len(np.unique(xs)) >= MIN_SIZES - 1 and (params := _fit_once(xs / unit, ys)) is not None:
            rows.append(params)
    if len(rows) < bootstrap / 2:
        return Fit(sizes=len(sizes), points=len(x), problem=f"only {len(rows)} of {bootstrap} bootstrap fits converged")
    curves = np.array(rows)
    tails = [(100 - LEVEL) / 2, (100 + LEVEL) / 2]
    return Fit(unit, *best, alpha_ci=tuple(np.percentile(curves[:, 2], tails)),
               l_inf_ci=tuple(np.percentile(curves[:, 0], tails)), curves=curves, sizes=len(sizes), points=len(x))


def needed_interval(fit: Fit, target: float) -> tuple[float, float, float, float]:
    """The N reaching `target`: the fit's, its bootstrap interval, and the share of resamples that never reach it."""
    values = np.sort([size_reaching(target, *row) for row in fit.curves]) * fit.x_unit  # "never" (inf) sorts last
    last = len(values) - 1
    low, high = values[int(np.floor(last * (100 - LEVEL) / 200))], values[int(np.ceil(last * (100 + LEVEL) / 200))]
    return fit.needed(target), low, high, float(np.mean(~np.isfinite(values)))


def _count(value: float, unit: str) -> str:
    if not np.isfinite(value):
        return "never" if value > 0 else "n/a"
    return f"{value:,.0f} {unit}" if value < 1e7 else f"{value:.3g} {unit}"


def needed_sentence(fit: Fit, teacher: float, label: str, x_label: str, teacher_x: float) -> str:
    """The size (in `x_label`) needed to come within WITHIN of the teacher's value, with its interval."""
    if not np.isfinite(teacher) or teacher <= 0:
        return f"{label}: the teacher's value {teacher:.3g} is not positive, so 'within {WITHIN:.0%}' is undefined."
    target = (1 + WITHIN) * teacher
    point, low, high, never = needed_interval(fit, target)
    if not np.isfinite(point):
        return (f"{label}: the fitted floor L_inf = {fit.l_inf:.3g} is above {1 + WITHIN:g} x the teacher's "
                f"{teacher:.3g}: no size of this kind comes within {WITHIN:.0%} of the teacher (by the fit).")
    share = f", {point / teacher_x:.0%} of the teacher's" if np.isfinite(teacher_x) and teacher_x > 0 else ""
    tail = f"; {never:.0%} of the resamples never reach it" if never > 0 else ""
    return (f"{label}: within {WITHIN:.0%} of the teacher's {teacher:.3g} (<= {target:.3g}) from about "
            f"{_count(point, x_label)}{share} ({LEVEL}% bootstrap interval {_count(low, '')}to "
            f"{_count(high, x_label)}{tail}).")


def law_sentence(fit: Fit, label: str, x_label: str) -> str:
    if fit.problem:
        return f"{label}: no fit: {fit.problem}."

    def g(value: float) -> str:  # a floor at its bound of 0 comes out as 1e-17 or so: 0 at the scale of a
        return "0" if abs(value) < 1e-6 * fit.a else f"{value:.3g}"

    return (f"{label}: L = {g(fit.l_inf)} + {fit.a:.3g} (N / {fit.x_unit:,.0f} {x_label})^-{fit.alpha:.2f}; exponent "
            f"alpha {fit.alpha:.2f} ({LEVEL}% interval {fit.alpha_ci[0]:.2f} to {fit.alpha_ci[1]:.2f}), floor L_inf "
            f"{g(fit.l_inf)} ({g(fit.l_inf_ci[0])} to {g(fit.l_inf_ci[1])}); {fit.sizes} sizes, {fit.points} runs.")


def scaling_points(evaluations: pd.DataFrame, models: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: its GROUP keys (method, init, image size, budget, size factor), parameters, FLOPs per
    forward, kid, fid and its model's validation task loss at its best epoch (the checkpoint that was evaluated; the
    last logged where the run did not log a best epoch)."""
    losses = histories[histories.key == "val_task_loss"].merge(
        models.reindex(columns=["run_id", "best_epoch"]), on="run_id", how="left")
    at_best = losses[losses.step == losses.best_epoch].groupby("run_id").value.last()
    last = losses.sort_values("step").groupby("run_id").value.last()
    loss = at_best.reindex(last.index).fillna(last)
    columns = [*GROUP, "num_parameters", "flops_per_forward", "kid", "fid"]
    points = with_keys(evaluations.reindex(columns=[*columns, "model_run_id"]))
    points["val_task_loss"] = points.model_run_id.map(loss)
    return points


QUALITIES = {"kid": "KID", "fid": "FID", "val_task_loss": "validation task loss"}
SIZES = {"num_parameters": "parameters", "flops_per_forward": "FLOPs per forward"}


@dataclass
class Scaling:
    """Every fit of the report: figure panels (scaling_figure), the fitted laws and the "size needed" sentences."""

    panels: list[dict]
    laws: list[str]
    needed: list[str]


def _teacher_mean(points: pd.DataFrame, column: str) -> float:
    values = points.loc[points.method == "teacher", column].dropna()
    return float(values.mean()) if len(values) else np.nan


def scaling_study(points: pd.DataFrame) -> Scaling:
    """Fit each quality against each size measure, per student method, init, resolution and budget (scaling_points
    rows); the size needed to come near the teacher only at the teacher's resolution."""
    points, name, out = with_keys(points), namer(points), Scaling([], [], [])
    students, teacher_px = points[points.method != "teacher"], points.image_size[points.method == "teacher"].max()
    for quality, q_label in QUALITIES.items():
        teacher = _teacher_mean(points, quality)
        for size, s_label in SIZES.items():
            fits, shown = {}, []
            for kind, group in students.groupby(KIND):
                series, px = name(*kind), group.image_size.iloc[0]
                label = f"{q_label} vs {s_label}, {series}"
                fit = fits[series] = fit_law(group[size], group[quality])
                out.laws.append(law_sentence(fit, label, s_label))
                if fit.problem is None:  # (no teacher at all: needed_sentence says so)
                    out.needed.append(needed_sentence(fit, teacher, label, s_label, _teacher_mean(points, size))
                                      if px == teacher_px or np.isnan(teacher_px) else
                                      f"{label}: not compared with the teacher, whose {q_label} is of "
                                      f"{key_text('image_size', teacher_px)} images.")
                shown.append(group.assign(x=group[size], y=group[quality], series=series).dropna(subset=["x", "y"]))
            if any(f.problem is None for f in fits.values()):
                out.panels.append({"title": q_label, "x_label": s_label, "points": pd.concat(shown), "fits": fits,
                                   "teacher": (_teacher_mean(points, size), teacher)})
    return out
