"""The study's answer: the smallest student near the teacher, with intervals that carry the teacher's own spread.

"Within 10% of the teacher" is read on the ratio student / teacher of a score (KID, FID; lower is better), per
student kind (method, init, resolution, budget) at the teacher's resolution. Each side is a mean with its standard
error: over seeds where there are several (t, n - 1 degrees of freedom), else the evaluation's sd over its draws (the
one spread a single run has; said so). The ratio's 95% interval is the delta method's with Welch-Satterthwaite degrees
of freedom. The smallest size whose mean ratio is at most 1.1 is named with that interval, and said to be "shown
within" only where the whole interval is. Students still improving when they stopped make it an upper bound ("at
most"); a teacher still improving makes it hold at these budgets only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dmat.report.tables import KIND, key_text, namer, with_keys

WITHIN = 0.10
LABELS = {"kid": "KID", "fid": "FID"}


@dataclass
class Estimate:
    mean: float
    se: float  # NaN: no spread known
    df: float  # inf: the sd over draws of one run
    n: int


def estimate(rows: pd.DataFrame, metric: str) -> Estimate:
    """The mean of `metric` over `rows` (runs) and its standard error: over the runs, else one run's sd over draws."""
    values = rows[metric].dropna()
    if len(values) > 1:
        return Estimate(float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))), len(values) - 1,
                        len(values))
    draws = rows.reindex(columns=[f"{metric}_sd"]).iloc[:, 0].dropna()
    return Estimate(float(values.mean()) if len(values) else np.nan, float(draws.iloc[0]) if len(draws) else np.nan,
                    np.inf, len(values))


def ratio_interval(student: Estimate, teacher: Estimate) -> tuple[float, float, float]:
    """student / teacher and its 95% interval (delta method, Welch-Satterthwaite degrees of freedom)."""
    ratio = student.mean / teacher.mean
    parts = np.array([(student.se / student.mean) ** 2, (teacher.se / teacher.mean) ** 2])
    if not np.isfinite(parts).all():
        return ratio, np.nan, np.nan
    dfs = np.array([student.df, teacher.df], dtype=float)
    finite = np.isfinite(dfs) & (parts > 0)
    den = float(np.sum(parts[finite] ** 2 / dfs[finite]))
    df = parts.sum() ** 2 / den if den > 0 else np.inf
    half = stats.t.ppf(0.975, df if np.isfinite(df) and df > 0 else 1e9) * abs(ratio) * np.sqrt(parts.sum())
    return ratio, ratio - half, ratio + half


@dataclass
class Near:
    """One student kind against the teacher: its smallest size within WITHIN (None: none is) or its best size."""

    name: str
    metric: str
    teacher: Estimate
    size: float | None
    student: Estimate
    ratio: tuple[float, float, float]
    improving: tuple[int, int]  # student runs of this kind still improving when they stopped, of all
    teacher_improving: bool
    shares: dict  # the size's parameters and FLOPs per forward as a share of the teacher's
    closest: float = np.nan  # the size of `student` (the closest to the teacher where none is within)
    runs: pd.DataFrame | None = None  # the evaluations of `student`
    teachers: pd.DataFrame | None = None  # the teacher's

    @property
    def shown(self) -> bool:
        return self.size is not None and self.ratio[2] <= 1 + WITHIN


def _improving(rows: pd.DataFrame) -> tuple[int, int]:
    flags = rows.reindex(columns=["still_improving"]).still_improving
    return int((flags > 0).sum()), len(rows)


def near_teacher(evaluations: pd.DataFrame, metric: str = "fid") -> tuple[list[Near], list[str]]:
    """Every student kind at the teacher's resolution against the teacher on `metric`, and a sentence for each kind
    that cannot be compared (another resolution) or for a teacher without the metric."""
    rows, name = with_keys(evaluations), namer(evaluations)
    rows = rows if metric in rows else rows.assign(**{metric: np.nan})
    teachers = rows[(rows.method == "teacher")].dropna(subset=[metric])
    if teachers.empty:
        return [], [f"The teacher has no {LABELS[metric]} evaluation, so no size can be compared with it."]
    px, teacher = teachers.image_size.iloc[0], estimate(teachers, metric)
    if teacher.mean <= 0:
        return [], [f"The teacher's {LABELS[metric]} {teacher.mean:.3g} is not positive, so 'within {WITHIN:.0%}' of "
                    "it is undefined."]
    out, apart = [], []
    for kind, group in rows[rows.method != "teacher"].groupby(KIND):
        if group.image_size.iloc[0] != px:
            apart.append(f"{name(*kind)}: not compared with the teacher's {LABELS[metric]}, which is of "
                         f"{key_text('image_size', px)} images (other real images, other features).")
            continue
        per_size = [(size, estimate(runs, metric), runs) for size, runs in group.groupby("size_factor")]
        per_size = [(size, est, runs) for size, est, runs in per_size if np.isfinite(est.mean)]
        if not per_size:
            continue
        ratios = [ratio_interval(est, teacher) for _, est, _ in per_size]
        close = [i for i, r in enumerate(ratios) if r[0] <= 1 + WITHIN]
        pick = close[0] if close else int(np.argmin([r[0] for r in ratios]))
        size, est, runs = per_size[pick]
        shares = {c: float(runs[c].mean() / teachers[c].mean()) for c in ("num_parameters", "flops_per_forward")
                  if c in runs and c in teachers}
        out.append(Near(name(*kind), metric, teacher, size if close else None, est, ratios[pick], _improving(group),
                        _improving(teachers)[0] > 0, shares, size, runs, teachers))
    return out, apart


def _ratio_text(near: Near) -> str:
    ratio, low, high = near.ratio
    if not np.isfinite(low):
        return f"{ratio:.2f}x the teacher's (no interval: no spread known)"
    spread = "over draws only, single runs" if near.student.n < 2 else f"over {near.student.n} seeds"
    return (f"{ratio:.2f}x the teacher's, 95% interval {low:.2f}x to {high:.2f}x ({spread}, the teacher's spread "
            "included)")


def _budget(near: Near) -> str:
    k, n = near.improving
    if near.teacher_improving:
        return "at these training budgets only (the teacher itself was still improving when it stopped)"
    return f"{k} of {n} runs of this kind were still improving when they stopped" if k else ""


def near_sentence(near: Near) -> str:
    """One kind's smallest size within WITHIN of the teacher, with its interval and what convergence makes of it."""
    label, budget = LABELS[near.metric], _budget(near)
    head = f"{near.name}: "
    if near.size is None:
        more = f"; {budget}, so more training may change this" if budget and not near.teacher_improving else (
            f"; {budget}" if budget else "")
        return (f"{head}no size is within {WITHIN:.0%} of the teacher's {label} {near.teacher.mean:.3g} (closest: "
                f"size {near.closest:g}, {_ratio_text(near)}){more}.")
    share = near.shares.get("num_parameters", np.nan)
    cost = f", {share:.0%} of the teacher's parameters" if np.isfinite(share) else ""
    bound = "at most " if budget and not near.teacher_improving else ""
    shown = ("" if near.shown else f"; its interval reaches {near.ratio[2]:.2f}x, so it is not shown to be within "
             f"{WITHIN:.0%}")
    return (f"{head}the smallest size within {WITHIN:.0%} of the teacher's {label} {near.teacher.mean:.3g} is "
            f"{bound}{near.size:g} ({label} {near.student.mean:.3g}, n={near.student.n}{cost}; {_ratio_text(near)})"
            f"{shown}{'; ' + budget if budget else ''}.")


def _smallest(nears: list[Near]) -> Near | None:
    within = [n for n in nears if n.size is not None]
    return min(within, key=lambda n: (n.size, n.ratio[0])) if within else None


def _closest(nears: list[Near]) -> Near | None:
    return min(nears, key=lambda n: n.ratio[0]) if nears else None


def _answer_metric(nears: list[Near], metric: str) -> str:
    """The answer on one metric: the smallest size within WITHIN of the teacher over every kind, its interval and
    cost, and what convergence makes of it; or the closest any kind came."""
    label, near = LABELS[metric], _smallest(nears)
    if near is None:
        if not nears:
            return f"By {label}, no student can be compared with the teacher."
        best = _closest(nears)
        budget = _budget(best) + (", so more training may change this" if best.improving[0] else "")
        return (f"By {label}, no student size measured comes within {WITHIN:.0%} of the teacher (closest: size "
                f"{best.closest:g} {best.name}, {_ratio_text(best)}){'; ' + budget if _budget(best) else ''}.")
    budget = _budget(near)
    bound = "at most " if budget and not near.teacher_improving else ""
    cost = " and ".join(f"{share:.0%} of the teacher's {what}" for what, share in
                        (("parameters", near.shares.get("num_parameters", np.nan)),
                         ("FLOPs per forward", near.shares.get("flops_per_forward", np.nan))) if np.isfinite(share))
    saving = f", a saving of {1 - near.shares['num_parameters']:.0%} of the parameters" if cost else ""
    shown = "" if near.shown else (f"; its interval reaches {near.ratio[2]:.2f}x, so it is not shown to be within "
                                   f"{WITHIN:.0%}")
    mean = "" if near.shown else " by its mean"
    return (f"By {label}, the smallest student within {WITHIN:.0%} of the teacher{mean} is {bound}size {near.size:g} "
            f"({near.name}): {_ratio_text(near)}{shown}; {cost or 'cost unknown'}{saving}"
            f"{'; ' + budget if budget else ''}.")


def _best_until(histories: pd.DataFrame, run_ids, epoch: float) -> float:
    """The best validation task loss of `run_ids` (mean over them) within their first `epoch` epochs."""
    rows = histories[(histories.key == "val_task_loss") & histories.run_id.isin(list(run_ids))
                     & (histories.step <= epoch)]
    return float(rows.groupby("run_id").value.min().mean()) if len(rows) else np.nan


def compute_sentence(near: Near | None, histories: pd.DataFrame | None) -> str:
    """The chosen student against the teacher at equal training compute, and at equal epochs where they differ, on
    the validation task loss (the one quality logged every epoch)."""
    if near is None or near.runs is None or "train_flops" not in near.runs:
        return ""
    student, teacher = (frame.reindex(columns=[*frame.columns.difference(["epochs_run", "train_flops"]), "epochs_run",
                                               "train_flops"]) for frame in (near.runs, near.teachers))
    s_flops, t_flops = student.train_flops.mean(), teacher.train_flops.mean()
    s_epochs, t_epochs = student.epochs_run.mean(), teacher.epochs_run.mean()
    if not (np.isfinite(s_flops) and np.isfinite(t_flops) and t_flops > 0 and t_epochs > 0):
        return "Training compute: not logged for both the student and the teacher, so no comparison at equal compute."
    note = " (the teacher's forward passes of distillation not counted)" if "distill" in near.name else ""
    text = (f"Training compute: size {near.size if near.size is not None else near.closest:g} {near.name} used "
            f"{s_flops:.3g} training FLOPs{note} over {s_epochs:g} epochs, {s_flops / t_flops:.0%} of the teacher's "
            f"{t_flops:.3g} over {t_epochs:g}.")
    if histories is None or "model_run_id" not in student:
        return text
    at_compute = s_flops / (t_flops / t_epochs)  # the teacher's epochs with the student's compute
    s_loss = _best_until(histories, student.model_run_id, np.inf)
    t_compute = _best_until(histories, teacher.model_run_id, at_compute)
    t_epochs_equal = _best_until(histories, teacher.model_run_id, s_epochs)
    if not np.isfinite(s_loss):
        return text
    compute = (f" At equal training compute the teacher (its first {at_compute:.3g} epochs) reached validation task "
               f"loss {t_compute:.3g} against the student's {s_loss:.3g}" if np.isfinite(t_compute) else
               f" At equal training compute the teacher had not finished one epoch (of {t_epochs:g})")
    epochs = (f"; at equal epochs ({s_epochs:g}) the teacher's was {t_epochs_equal:.3g}"
              if s_epochs != t_epochs and np.isfinite(t_epochs_equal) else "")
    return f"{text}{compute}{epochs}."


def answer(evaluations: pd.DataFrame, histories: pd.DataFrame | None = None) -> str:
    """The study's answer in one paragraph: by KID (the headline) and by FID, the smallest student size within 10%
    of the teacher, with which method and init, its interval (the teacher's spread included) and its cost saving;
    then that student against the teacher at equal training compute and, where budgets differ, at equal epochs."""
    nears = {metric: near_teacher(evaluations, metric)[0] for metric in LABELS}
    chosen = _smallest(nears["kid"]) or _smallest(nears["fid"]) or _closest(nears["kid"]) or _closest(nears["fid"])
    text = " ".join(_answer_metric(nears[m], m) for m in LABELS)
    return f"The answer: {text} {compute_sentence(chosen, histories)}".strip()
