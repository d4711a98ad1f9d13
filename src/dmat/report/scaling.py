"""Scaling-law fit of the report: quality against model size, L(N) = L_inf + a * N^-alpha.

N is the parameter count or the FLOPs of one forward pass; L is KID, FID or the validation task loss
(lower is better). One fit per student method, init, resolution and training budget (epochs), over every run (seed)
of every size: never across resolutions, whose qualities are against real images of different sizes, nor across
budgets, which are other models. The teacher is the reference the sizes are measured against, not a point of the
fit, and only at its own resolution. The fit and its intervals (a parametric bootstrap that reaches its nominal
coverage in simulation) are report/powerlaw.py's. A fit needs MIN_SIZES distinct sizes and must find a fall with size
and an exponent inside its bounds; otherwise it says why and draws nothing.

What a sentence may claim: "the size needed to come within 10% of the teacher" carries the teacher's own uncertainty
(its sd over draws, or over its seeds) in its interval; outside the sizes measured it is an extrapolation, said so
with its factor, and not stated as a finding; drawn from students still improving when they stopped it is an upper
bound ("at most"), and with the teacher itself still improving it holds at these budgets only. A law drawn from
runs still improving says so in its own sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmat.report.powerlaw import BOOTSTRAP, LEVEL, MIN_SIZES, Fit, fit_law, needed_interval, power_law
from dmat.report.tables import GROUP, KIND, key_text, namer, with_keys

__all__ = ["BOOTSTRAP", "MIN_SIZES", "Fit", "fit_law", "needed_interval", "power_law", "Reference", "Scaling",
           "law_sentence", "needed_sentence", "scaling_points", "scaling_study"]
WITHIN = 0.10  # "within 10% of the teacher": L <= 1.1 x the teacher's L
BEYOND = 1.05  # a size needed more than 5% outside the sizes measured is an extrapolation


@dataclass
class Reference:
    """The teacher a "size needed" is measured against: its value, its sd (over draws, or over its seeds' mean where
    it has several), its size, and whether it was still improving when it stopped."""

    value: float
    sd: float = 0.0
    x: float = np.nan
    improving: bool = False


def _count(value: float, unit: str) -> str:
    if not np.isfinite(value):
        return "never" if value > 0 else "n/a"
    return f"{value:,.0f} {unit}" if value < 1e7 else f"{value:.3g} {unit}"


def _where(point: float, x_range: tuple[float, float]) -> str | None:
    """Why `point` is an extrapolation (its factor beyond the sizes measured), or None when it lies among them."""
    if np.isfinite(point) and point > BEYOND * x_range[1]:
        return f"an extrapolation: {point / x_range[1]:.1f}x the largest student measured"
    if np.isfinite(point) and point < x_range[0] / BEYOND:
        return f"an extrapolation: {x_range[0] / point:.1f}x below the smallest student measured"
    return None


def _budget(improving: tuple[int, int], teacher: bool) -> str:
    """The sentence's qualifier for models still improving: '' (all converged), else what it makes of the size."""
    k, n = improving
    if teacher:
        return (f"at these training budgets only (the teacher{f' and {k} of {n} student runs' if k else ''} still "
                "improving when they stopped: no bound either way)")
    return f"an upper bound: {k} of {n} student runs were still improving when they stopped" if k else ""


def needed_sentence(fit: Fit, reference: Reference, label: str, x_label: str,
                    improving: tuple[int, int] = (0, 0)) -> str:
    """The size (in `x_label`) needed to come within WITHIN of the teacher's value, with its interval (the teacher's
    sd included); an extrapolation says so with its factor, and students still improving make it an upper bound."""
    teacher = reference.value
    if not np.isfinite(teacher) or teacher <= 0:
        return f"{label}: the teacher's value {teacher:.3g} is not positive, so 'within {WITHIN:.0%}' is undefined."
    target = (1 + WITHIN) * teacher
    point, low, high, never = needed_interval(fit, target, (1 + WITHIN) * reference.sd)
    qualifier = _budget(improving, reference.improving)
    if not np.isfinite(point):
        k, n = improving
        budget = (f"; at these training budgets: the teacher{f' and {k} of {n} student runs' if k else ''} still "
                  "improving when they stopped" if reference.improving else
                  f"; at these training budgets: {k} of {n} student runs were still improving when they stopped, "
                  "so more training may change this" if k else "")
        return (f"{label}: the fitted floor L_inf = {fit.l_inf:.3g} is above {1 + WITHIN:g} x the teacher's "
                f"{teacher:.3g}: no size of this kind comes within {WITHIN:.0%} of the teacher (by the fit{budget}).")
    share = f", {point / reference.x:.0%} of the teacher's" if np.isfinite(reference.x) and reference.x > 0 else ""
    spread = f"the teacher's sd {reference.sd:.2g} included" if reference.sd > 0 else "the teacher taken as exact"
    tail = f"; {never:.0%} of the resamples never reach it" if never > 0 else ""
    beyond = _where(high, fit.x_range) if _where(point, fit.x_range) is None else None
    tail += f"; its upper end is {beyond}" if beyond else ""
    interval = f"{LEVEL}% interval {_count(low, '')}to {_count(high, x_label)}, {spread}{tail}"
    where, bound = _where(point, fit.x_range), "at most " if qualifier.startswith("an upper") else ""
    qualifier = f"; {qualifier}" if qualifier else ""
    if where:
        measured = ("every student measured comes within" if point < fit.x_range[0] else
                    "no student measured is known to come within")
        at = "no more than " if bound else ""
        return (f"{label}: {measured} {WITHIN:.0%} of the teacher's {teacher:.3g}; the law, extrapolated, puts the "
                f"size needed at {at}about {_count(point, x_label)}{share} ({interval}): {where}, not a "
                f"finding{qualifier}.")
    return (f"{label}: within {WITHIN:.0%} of the teacher's {teacher:.3g} (<= {target:.3g}) from {bound}about "
            f"{_count(point, x_label)}{share} ({interval}){qualifier}.")


def law_sentence(fit: Fit, label: str, x_label: str, improving: tuple[int, int] = (0, 0)) -> str:
    if fit.problem:
        return f"{label}: no fit: {fit.problem}."

    def g(value: float) -> str:  # a floor at its bound of 0 comes out as 1e-17 or so: 0 at the scale of a
        return "0" if abs(value) < 1e-6 * fit.a else f"{value:.3g}"

    budget = (f"at these training budgets ({improving[0]} of {improving[1]} runs still improving when they stopped, "
              "so not the law of converged models), " if improving[0] else "")
    return (f"{label}: {budget}L = {g(fit.l_inf)} + {fit.a:.3g} (N / {fit.x_unit:,.0f} {x_label})^-{fit.alpha:.2f}; "
            f"exponent alpha {fit.alpha:.2f} ({LEVEL}% interval {fit.alpha_ci[0]:.2f} to {fit.alpha_ci[1]:.2f}), "
            f"floor L_inf {g(fit.l_inf)} ({g(fit.l_inf_ci[0])} to {g(fit.l_inf_ci[1])}); {fit.sizes} sizes, "
            f"{fit.points} runs.")


def scaling_points(evaluations: pd.DataFrame, models: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: its GROUP keys (method, init, image size, budget, size factor), parameters, FLOPs per
    forward, kid, fid and its model's validation task loss at its best epoch (the checkpoint that was evaluated; the
    last logged where the run did not log a best epoch), the sds over draws of kid and fid, and still_improving."""
    losses = histories[histories.key == "val_task_loss"].merge(
        models.reindex(columns=["run_id", "best_epoch"]), on="run_id", how="left")
    at_best = losses[losses.step == losses.best_epoch].groupby("run_id").value.last()
    last = losses.sort_values("step").groupby("run_id").value.last()
    loss = at_best.reindex(last.index).fillna(last)
    columns = [*GROUP, "num_parameters", "flops_per_forward", "kid", "fid", "kid_sd", "fid_sd", "still_improving"]
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


def teacher_reference(points: pd.DataFrame, quality: str, size: str) -> Reference:
    """The teacher's value of `quality` (mean over its runs), its sd (over its runs' mean where there are several,
    else its sd over draws, `<quality>_sd`; 0 where neither exists), its `size` and whether it was still improving."""
    teachers = points[points.method == "teacher"]
    values = teachers.reindex(columns=[quality])[quality].dropna()
    if len(values) > 1:
        sd = float(values.std(ddof=1) / np.sqrt(len(values)))
    else:
        draws = teachers.reindex(columns=[f"{quality}_sd"]).iloc[:, 0].dropna() if len(values) else pd.Series()
        sd = float(draws.mean()) if len(draws) else 0.0
    flags = teachers.reindex(columns=["still_improving"]).still_improving
    return Reference(float(values.mean()) if len(values) else np.nan, sd, _teacher_mean(points, size),
                     bool((flags > 0).any()))


def improving_runs(group: pd.DataFrame, quality: str) -> tuple[int, int]:
    """(runs still improving when they stopped, runs) among the rows of `group` with a value of `quality`."""
    rows = group.dropna(subset=[quality])
    return int((rows.reindex(columns=["still_improving"]).still_improving > 0).sum()), len(rows)


def scaling_study(points: pd.DataFrame) -> Scaling:
    """Fit each quality against each size measure, per student method, init, resolution and budget (scaling_points
    rows); the size needed to come near the teacher only at the teacher's resolution."""
    points, name, out = with_keys(points), namer(points), Scaling([], [], [])
    students, teacher_px = points[points.method != "teacher"], points.image_size[points.method == "teacher"].max()
    for quality, q_label in QUALITIES.items():
        for size, s_label in SIZES.items():
            fits, shown, reference = {}, [], teacher_reference(points, quality, size)
            for kind, group in students.groupby(KIND):
                series, px, improving = name(*kind), group.image_size.iloc[0], improving_runs(group, quality)
                label = f"{q_label} vs {s_label}, {series}"
                fit = fits[series] = fit_law(group[size], group[quality])
                out.laws.append(law_sentence(fit, label, s_label, improving))
                if fit.problem is None:  # (no teacher at all: needed_sentence says so)
                    out.needed.append(needed_sentence(fit, reference, label, s_label, improving)
                                      if px == teacher_px or np.isnan(teacher_px) else
                                      f"{label}: not compared with the teacher, whose {q_label} is of "
                                      f"{key_text('image_size', teacher_px)} images.")
                shown.append(group.assign(x=group[size], y=group[quality], series=series).dropna(subset=["x", "y"]))
            if any(f.problem is None for f in fits.values()):
                out.panels.append({"title": q_label, "x_label": s_label, "points": pd.concat(shown), "fits": fits,
                                   "teacher": (reference.x, reference.value)})
    return out
