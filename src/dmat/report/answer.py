"""The study's answer: the smallest student shown near the teacher, in both feature spaces, with intervals that carry
the teacher's own spread.

"Within 10% of the teacher" is read on the ratio student / teacher of a score (KID, FID; lower is better), per
student kind (method, init, resolution, budget) at the teacher's resolution. Each side is a mean with its standard
error: over seeds where there are several (t, n - 1 degrees of freedom), else the evaluation's sd over its draws (the
one spread a single run has; said so), widened by the study's seed-to-draws ratio where other models were trained with
several seeds (SeedSpread: a teacher trained once would otherwise be taken as nearly exact; with a seed spread twice
the draws', ratio intervals covered 84% for a nominal 95%, and 95% widened, tests/test_answer.py). The ratio's 95% interval is the delta method's with Welch-Satterthwaite degrees
of freedom.

The size named is read without selection bias: from the largest size down, each size whose whole interval is within
10% passes, and the first that does not ends the sequence (fixed-sequence testing: each test is reached only when
the larger sizes passed, so under quality that does not improve as a student shrinks, the named size is truly outside
10% with probability at most 2.5%, one-sided, whatever the number of sizes). The smallest size whose *mean* is
within 10% -- biased: among noisy sizes the luckiest one is picked -- follows only as a secondary line. A verdict
needs both feature spaces (DESIGN trap 11): the random CNN's KID (noise, blur) and the classifier's (dropped classes).
Students still improving when they stopped make a size an upper bound ("at most"); a teacher still improving makes
it hold at these budgets only. Longer than 300 lines: the estimates, the sequence and the sentences that state them
are read together, and a sentence's wording is the science here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dmat.report.tables import GROUP, KIND, key_text, namer, with_keys

WITHIN = 0.10
LABELS = {"kid": "KID", "kid_classifier": "the classifier's KID", "fid": "FID"}
BOTH_SPACES = ("kid", "kid_classifier")  # the headline (random-CNN) KID and the classifier's: a verdict needs both


@dataclass
class Estimate:
    mean: float
    se: float  # NaN: no spread known
    df: float  # inf: the sd over draws of one run
    n: int


@dataclass
class SeedSpread:
    """How much wider the spread over training seeds is than one evaluation's spread over its draws, pooled over
    every model trained with several seeds: sqrt(sum (n-1) var_seeds / sum (n-1) sd_draws^2), on `df` degrees of
    freedom. A model trained once has only its draws' sd; times this ratio it stands for its run-to-run spread."""

    ratio: float
    df: int

    @classmethod
    def of(cls, rows: pd.DataFrame, metric: str) -> "SeedSpread | None":
        seeds = rows.reindex(columns=[*GROUP, metric, f"{metric}_sd"]).dropna(subset=[metric, f"{metric}_sd"])
        groups = [g for _, g in seeds.groupby(GROUP, dropna=False) if len(g) > 1]
        if not groups:
            return None
        within = sum((len(g) - 1) * g[metric].var(ddof=1) for g in groups)
        draws = sum((len(g) - 1) * float((g[f"{metric}_sd"] ** 2).mean()) for g in groups)
        df = sum(len(g) - 1 for g in groups)
        return cls(float(np.sqrt(within / draws)), df) if draws > 0 else None


def estimate(rows: pd.DataFrame, metric: str, spread: SeedSpread | None = None) -> Estimate:
    """The mean of `metric` over `rows` (runs) and its standard error: over the runs, else one run's sd over draws,
    widened to the run-to-run spread by the study's seed-to-draws ratio where it was measured (never narrowed)."""
    values = rows[metric].dropna()
    if len(values) > 1:
        return Estimate(float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))), len(values) - 1,
                        len(values))
    draws = rows.reindex(columns=[f"{metric}_sd"]).iloc[:, 0].dropna()
    se = float(draws.iloc[0]) if len(draws) else np.nan
    if spread is not None:
        return Estimate(float(values.mean()) if len(values) else np.nan, se * max(1.0, spread.ratio), spread.df,
                        len(values))
    return Estimate(float(values.mean()) if len(values) else np.nan, se, np.inf, len(values))


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
class SizeRatio:
    """One size of a student kind against the teacher."""

    size: float
    student: Estimate
    ratio: tuple[float, float, float]  # the ratio and its 95% interval
    runs: pd.DataFrame  # its evaluations

    @property
    def shown(self) -> bool:
        return bool(np.isfinite(self.ratio[2]) and self.ratio[2] <= 1 + WITHIN)


def shown_within(sizes: list[SizeRatio]) -> SizeRatio | None:
    """The smallest size of the fixed sequence from the largest down in which every size is shown within WITHIN."""
    passed = None
    for size in sorted(sizes, key=lambda s: -s.size):
        if not size.shown:
            break
        passed = size
    return passed


@dataclass
class Near:
    """One student kind against the teacher on one metric: the size shown within WITHIN (fixed sequence), the
    smallest within by its mean (biased: secondary), and the closest size (where none is within)."""

    name: str
    metric: str
    teacher: Estimate
    shown: SizeRatio | None
    by_mean: SizeRatio | None
    closest: SizeRatio
    improving: tuple[int, int]  # student runs of this kind still improving when they stopped, of all
    teacher_improving: bool
    teachers: pd.DataFrame  # the teacher's evaluations
    sizes: list[SizeRatio]  # every size measured
    kind: tuple = ()  # the kind's KIND values (method, init, NAMED keys)

    @property
    def named(self) -> SizeRatio:
        """The size a sentence is about: the one shown within, else the smallest by its mean, else the closest."""
        return self.shown or self.by_mean or self.closest

    def shares(self, size: SizeRatio) -> dict[str, float]:
        """The size's parameters and FLOPs per forward as a share of the teacher's."""
        return {c: float(size.runs[c].mean() / self.teachers[c].mean()) for c in ("num_parameters", "flops_per_forward")
                if c in size.runs and c in self.teachers}


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
    spread = SeedSpread.of(rows, metric)
    px, teacher = teachers.image_size.iloc[0], estimate(teachers, metric, spread)
    if teacher.mean <= 0:
        return [], [f"The teacher's {LABELS[metric]} {teacher.mean:.3g} is not positive, so 'within {WITHIN:.0%}' of "
                    "it is undefined."]
    out, apart = [], []
    for kind, group in rows[rows.method != "teacher"].groupby(KIND):
        if group.image_size.iloc[0] != px:
            apart.append(f"{name(*kind)}: not compared with the teacher's {LABELS[metric]}, which is of "
                         f"{key_text('image_size', px)} images (other real images, other features).")
            continue
        sizes = [SizeRatio(size, est, ratio_interval(est, teacher), runs) for size, runs in group.groupby("size_factor")
                 for est in [estimate(runs, metric, spread)] if np.isfinite(est.mean)]
        if not sizes:
            continue
        by_mean = [s for s in sizes if s.ratio[0] <= 1 + WITHIN]
        out.append(Near(name(*kind), metric, teacher, shown_within(sizes), by_mean[0] if by_mean else None,
                        min(sizes, key=lambda s: s.ratio[0]), _improving(group), _improving(teachers)[0] > 0,
                        teachers, sizes, kind))
    return out, apart


def _ratio_text(size: SizeRatio) -> str:
    ratio, low, high = size.ratio
    if not np.isfinite(low):
        return f"{ratio:.2f}x the teacher's (no interval: no spread known)"
    spread = "over draws only, single runs" if size.student.n < 2 else f"over {size.student.n} seeds"
    return (f"{ratio:.2f}x the teacher's, 95% interval {low:.2f}x to {high:.2f}x ({spread}, the teacher's spread "
            "included)")


def _not_shown(size: SizeRatio) -> str:
    """A size within by its mean whose interval does not show it within."""
    ratio, low, high = size.ratio
    if not np.isfinite(high):
        return f"{ratio:.2f}x the teacher's, with no interval (no spread known)"
    spread = "over draws only, single runs" if size.student.n < 2 else f"over {size.student.n} seeds"
    return f"{ratio:.2f}x the teacher's, but its 95% interval, {low:.2f}x to {high:.2f}x {spread}, does not show it"


def _budget(near: Near) -> str:
    k, n = near.improving
    if near.teacher_improving:
        return "at these training budgets only (the teacher itself was still improving when it stopped)"
    return f"{k} of {n} runs of this kind were still improving when they stopped" if k else ""


def _bound(near: Near) -> str:
    return "at most " if _budget(near) and not near.teacher_improving else ""


def _cost(near: Near, size: SizeRatio) -> str:
    shares = near.shares(size)
    return " and ".join(f"{shares[c]:.0%} of the teacher's {what}" for c, what in
                        (("num_parameters", "parameters"), ("flops_per_forward", "FLOPs per forward")) if c in shares)


def _biased_too(near: Near) -> str:
    """The smaller size within by its mean alone, where there is one: a secondary, selection-biased reading."""
    mean = near.by_mean
    if mean is None or (near.shown is not None and mean.size >= near.shown.size):
        return ""
    if mean.shown:  # its own interval is within, but a larger size's is not: the sequence stopped above it
        failed = min((s for s in near.sizes if s.size > mean.size and not s.shown), key=lambda s: -s.size)
        return (f"; by its mean alone size {mean.size:g} comes within {WITHIN:.0%} too ({mean.ratio[0]:.2f}x the "
                f"teacher's), but size {failed.size:g} above it is not shown within, and sizes are read from the "
                "largest down")
    return f"; by its mean alone size {mean.size:g} comes within {WITHIN:.0%} too ({_not_shown(mean)})"


def near_sentence(near: Near) -> str:
    """One kind's smallest size shown within WITHIN of the teacher, with its interval and what convergence makes of
    it; the smaller size within by its mean alone after it."""
    label, budget, head = LABELS[near.metric], _budget(near), f"{near.name}: "
    tail = f"; {budget}" if budget else ""
    if near.shown is None:
        more = ", so more training may change this" if budget and not near.teacher_improving else ""
        closest = (f"by its mean alone size {near.by_mean.size:g} comes within: {_not_shown(near.by_mean)}"
                   if near.by_mean else
                   f"closest: size {near.closest.size:g}, {_ratio_text(near.closest)}")
        shown = " shown" if near.by_mean else ""  # within by its mean, not shown; or not even by its mean
        return (f"{head}no size is{shown} within {WITHIN:.0%} of the teacher's {label} {near.teacher.mean:.3g} "
                f"({closest}){tail}{more}.")
    size, cost = near.shown, _cost(near, near.shown)
    return (f"{head}the smallest size shown within {WITHIN:.0%} of the teacher's {label} {near.teacher.mean:.3g} is "
            f"{_bound(near)}{size.size:g} ({label} {size.student.mean:.3g}, n={size.student.n}"
            f"{', ' + cost if cost else ''}; {_ratio_text(size)}){_biased_too(near)}{tail}.")


def _answer_metric(nears: list[Near], metric: str) -> str:
    """The answer on one metric: the smallest size shown within WITHIN of the teacher over every kind, its interval
    and cost, and what convergence makes of it; else the smallest within by its mean, or the closest any kind came."""
    label = LABELS[metric]
    if not nears:
        return f"By {label}, no student can be compared with the teacher."
    shown = [n for n in nears if n.shown is not None]
    if not shown:
        mean = [n for n in nears if n.by_mean is not None]
        if mean:
            near = min(mean, key=lambda n: n.by_mean.size)
            budget = f"; {_budget(near)}" if _budget(near) else ""
            return (f"By {label}, no student size is shown within {WITHIN:.0%} of the teacher; by its mean alone "
                    f"{_bound(near)}size {near.by_mean.size:g} ({near.name}) comes within: {_not_shown(near.by_mean)}"
                    f"{budget}.")
        near = min(nears, key=lambda n: n.closest.ratio[0])
        budget = _budget(near) and f"; {_budget(near)}" + (", so more training may change this" if near.improving[0]
                                                            else "")
        return (f"By {label}, no student size measured comes within {WITHIN:.0%} of the teacher (closest: size "
                f"{near.closest.size:g} {near.name}, {_ratio_text(near.closest)}){budget}.")
    near = min(shown, key=lambda n: (n.shown.size, n.shown.ratio[0]))
    cost, budget = _cost(near, near.shown), _budget(near)
    share = near.shares(near.shown).get("num_parameters", np.nan)
    saving = f", a saving of {1 - share:.0%} of the parameters" if np.isfinite(share) else ""
    return (f"By {label}, the smallest student shown within {WITHIN:.0%} of the teacher is {_bound(near)}size "
            f"{near.shown.size:g} ({near.name}): {_ratio_text(near.shown)}; {cost or 'cost unknown'}{saving}"
            f"{_biased_too(near)}{'; ' + budget if budget else ''}.")


def both_spaces(nears: dict[str, list[Near]]) -> str:
    """The verdict both feature spaces agree on: per kind, a size shown within WITHIN of the teacher in each (the
    larger of the two sizes each shows: both fixed sequences pass every size above theirs); where they disagree,
    which sees what."""
    if not nears.get("kid_classifier"):
        return ("Only the random-CNN features scored these models, so no size is said to be within 10% of the teacher "
                "in both feature spaces (a verdict needs both: the classifier sees dropped classes, the random CNN "
                "noise and blur).")
    classifier = {n.name: n for n in nears["kid_classifier"]}
    agreed, split = [], []
    for near in nears["kid"]:
        other = classifier.get(near.name)
        if other is None:
            continue
        sizes = [n.shown.size if n.shown is not None else None for n in (near, other)]
        if None not in sizes:
            agreed.append((max(sizes), near.name))
        elif sizes != [None, None]:
            seen, blind = ("random CNN", "classifier") if sizes[0] is not None else ("classifier", "random CNN")
            split.append(f"{near.name}: the {seen}'s KID shows size {max(s for s in sizes if s is not None):g} within "
                         f"{WITHIN:.0%}, the {blind}'s shows no size within")
    text = (f"In both feature spaces, the smallest student shown within {WITHIN:.0%} of the teacher's KID is size "
            f"{min(agreed)[0]:g} ({min(agreed)[1]})." if agreed else
            f"No student size is shown within {WITHIN:.0%} of the teacher's KID in both feature spaces.")
    if split:
        text += (" The feature spaces disagree on " + "; ".join(split) + " (the classifier sees which classes are "
                 "drawn, the random CNN noise and blur: see the sensitivity section).")
    return text


def _best_until(histories: pd.DataFrame, run_ids, epoch: float) -> float:
    """The best validation task loss of `run_ids` (mean over them) within their first `epoch` epochs."""
    rows = histories[(histories.key == "val_task_loss") & histories.run_id.isin(list(run_ids))
                     & (histories.step <= epoch)]
    return float(rows.groupby("run_id").value.min().mean()) if len(rows) else np.nan


def compute_sentence(near: Near | None, histories: pd.DataFrame | None) -> str:
    """The chosen student against the teacher at equal training compute, and at equal epochs where they differ, on
    the validation task loss (the one quality logged every epoch)."""
    if near is None or "train_flops" not in near.named.runs:
        return ""
    student, teacher = (frame.reindex(columns=[*frame.columns.difference(["epochs_run", "train_flops"]), "epochs_run",
                                               "train_flops"]) for frame in (near.named.runs, near.teachers))
    s_flops, t_flops = student.train_flops.mean(), teacher.train_flops.mean()
    s_epochs, t_epochs = student.epochs_run.mean(), teacher.epochs_run.mean()
    if not (np.isfinite(s_flops) and np.isfinite(t_flops) and t_flops > 0 and t_epochs > 0):
        return "Training compute: not logged for both the student and the teacher, so no comparison at equal compute."
    note = " (the teacher's forward passes of distillation not counted)" if "distill" in near.name else ""
    pruned = (student.get("init", pd.Series(dtype=object)) == "pruned").all() and len(student)
    inherited = (f"; with the teacher's training it inherited by its pruned start, {(s_flops + t_flops) / t_flops:.0%}"
                 if pruned else "")
    text = (f"Training compute: size {near.named.size:g} {near.name} used "
            f"{s_flops:.3g} training FLOPs{note} over {s_epochs:g} epochs, {s_flops / t_flops:.0%} of the teacher's "
            f"{t_flops:.3g} over {t_epochs:g}{inherited}.")
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
    """The study's answer in one paragraph: the size both feature spaces show within 10% of the teacher; then by
    each KID and by FID, the smallest student size shown within 10%, with which method and init, its interval (the
    teacher's spread included) and its cost saving; then that student against the teacher at equal training compute
    and, where budgets differ, at equal epochs."""
    nears = {metric: near_teacher(evaluations, metric)[0] for metric in LABELS}
    ranked = [n for m in ("kid", "fid") for n in sorted(nears[m], key=lambda n: (n.shown is None, n.named.size))]
    scored = [m for m in LABELS if nears[m] or m != "kid_classifier"]  # the classifier's KID where it was measured
    text = " ".join([both_spaces(nears)] + [_answer_metric(nears[m], m) for m in scored])
    return f"The answer: {text} {compute_sentence(ranked[0] if ranked else None, histories)}".strip()
