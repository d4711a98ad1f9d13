"""Findings written from the data: sentences computed from the summary table, nothing hand-written.

Models are compared only at one resolution: a model's KID and FID are against real images of its own size, in
features trained at it, so a 16 px student's FID says nothing against a 32 px teacher's. Students are compared with
each other only at one training budget (epochs), so that a difference is one of method or init, not of budget; the
teacher is the reference whatever its budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dmat.report.frontier import frontier
from dmat.report.tables import GROUP, KIND, key_text, kind_of, namer, with_keys

WITHIN = 0.10  # "close to the teacher" = FID at most 10% above the teacher's
FLOOR_SPREAD = 2.0  # "inside the floor's spread" = KID within 2 sd (over draws) of the real-vs-real floor
COPY_ALARM = 0.05  # a copy rate of 5x chance (1%, memorisation.COPY_PERCENTILE) flags memorisation


def _fmt(mean: float, ci: float) -> str:
    return f"{mean:.3g} ± {ci:.2g}" if np.isfinite(ci) else f"{mean:.3g}"


def smallest_near_teacher(table: pd.DataFrame) -> list[str]:
    table, name = with_keys(table), namer(table)
    teachers = table[table.method == "teacher"].dropna(subset=["fid"])
    if teachers.empty:
        return ["The teacher has no FID evaluation, so no size can be compared with it."]
    teacher = teachers.iloc[0]
    limit = (1 + WITHIN) * teacher.fid
    lines = []
    for kind, group in table[table.method != "teacher"].groupby(KIND):
        method = name(*kind)
        if group.image_size.iloc[0] != teacher.image_size:
            lines.append(f"{method}: not compared with the teacher's FID, which is of "
                         f"{key_text('image_size', teacher.image_size)} images (other real images, other features).")
            continue
        close = group[group.fid <= limit].sort_values("size_factor")
        if close.empty:
            best = group.dropna(subset=["fid"]).sort_values("fid").head(1)
            detail = f" (best: size {best.size_factor.iloc[0]:g}, FID {best.fid.iloc[0]:.3g})" if len(best) else ""
            lines.append(f"{method}: no size is within {WITHIN:.0%} of the teacher's FID {teacher.fid:.3g}{detail}.")
            continue
        row = close.iloc[0]
        share = row.num_parameters / teacher.num_parameters
        lines.append(f"{method}: the smallest size within {WITHIN:.0%} of the teacher's FID {teacher.fid:.3g} is "
                     f"{row.size_factor:g} (FID {_fmt(row.fid, row.fid_ci95)}, n={row.n}, {share:.0%} of the "
                     "teacher's parameters).")
    return lines


def _welch(a: pd.Series, b: pd.Series) -> str:
    """A Welch t-test's verdict where both sides have n >= 2 (repeated seeds), else why there is none."""
    if min(len(a), len(b)) < 2:
        return " (single runs: no test possible)"
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return f" (Welch t-test over seeds, n={len(a)} vs {len(b)}, p={p:.2g}{'' if p < 0.05 else ', not significant at 5%'})"


def _compared(evaluations: pd.DataFrame, column: str, sides: dict[str, str], within: dict, wording: str,
              subject: str = "") -> list[str]:
    """Per model of both `sides` of `column` (like with like: one resolution, budget and size, and `within`, e.g.
    one init): the FID difference, Welch-tested. `wording` formats the sentence with where ("size 0.5" + `subject`,
    and the resolution and budget where there are several), a, b (mean FIDs) and verdict."""
    rows, name = with_keys(evaluations), namer(evaluations)
    for key, value in within.items():
        rows = rows[rows[key] == value]
    rows = rows.assign(fid=rows.get("fid", np.nan))
    (a_value, a_name), (b_value, b_name) = sides.items()
    like = [key for key in GROUP if key != column and key not in within]  # (image_size, epochs, size_factor)
    lines = []
    for keys, group in sorted(rows.groupby(like), key=lambda item: (-item[0][0], *item[0][1:])):  # larger images first
        if not {a_value, b_value} <= set(group[column]):
            continue
        a, b = (group.fid[group[column] == v].dropna() for v in (a_value, b_value))
        where = name(f"size {keys[-1]:g}{subject}", None, *keys[:-1])
        if a.empty or b.empty:
            lines.append(f"{where}: FID missing on one side, no comparison.")
            continue
        verdict = f"{a_name} better" if a.mean() < b.mean() else f"{b_name} better" if b.mean() < a.mean() else "equal"
        lines.append(wording.format(where=where, a=a.mean(), b=b.mean(), verdict=verdict + _welch(a, b)))
    return lines


def distill_vs_scratch(table: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """Per size (and resolution and budget) with both methods (from random weights): the FID difference, with a
    Welch t-test over seeds."""
    lines = _compared(evaluations, "method", {"distill": "distillation", "scratch": "scratch"}, {"init": "random"},
                      "{where}: distilled FID {a:.3g} vs scratch {b:.3g}: {verdict}.")
    return lines or ["No size has both distilled and scratch students with evaluations."]


def pruned_vs_random(evaluations: pd.DataFrame) -> list[str]:
    """Per method and size (and resolution and budget) with both inits: the FID of students started from the pruned
    teacher against random."""
    rows = with_keys(evaluations)
    return [line for method in sorted(set(rows[rows.init == "pruned"].method))
            for line in _compared(rows, "init", {"pruned": "pruned init", "random": "random init"}, {"method": method},
                                  "{where}: pruned-init FID {a:.3g} vs random-init {b:.3g}: {verdict}.", f" {method}")]


def seeds_statement(evaluations: pd.DataFrame, models: pd.DataFrame) -> list[str]:
    """What the repeats of one model (GROUP: method, init, resolution, budget, size) vary, read from the runs."""
    students = with_keys(evaluations[evaluations.method != "teacher"])
    seeds = sorted(students.get("model_seed", pd.Series(dtype=object)).dropna().unique(), key=str)
    repeats = students.groupby(GROUP).size()
    teachers = models[(models.role == "teacher") & (models.status == "FINISHED")]
    teacher = ("one teacher run is shared by every student, so no interval includes the teacher's own seed"
               if len(teachers) <= 1 else f"{len(teachers)} teacher runs")
    if repeats.empty or repeats.max() < 2:
        return [f"One run per size and method (student seeds: {', '.join(map(str, seeds)) or 'n/a'}): no interval "
                f"over seeds; {teacher}."]
    return [f"Seeds: {repeats.min()} to {repeats.max()} runs per size and method (student seeds "
            f"{', '.join(map(str, seeds))}); a student's seed sets its initial weights (random init) and the order "
            f"of its training data; {teacher}; every evaluation samples with the same evaluation seed. Intervals are "
            "95% t-intervals over these runs."]


def still_improving(evaluations: pd.DataFrame) -> list[str]:
    """Models that were still improving when training stopped: their size comparison is partly a budget one."""
    flags = with_keys(evaluations).reindex(columns=[*GROUP, "model_seed", "still_improving"])
    known = flags.dropna(subset=["still_improving"])
    if known.empty:
        return ["Whether each model was still improving when it stopped is unknown (no run logged still_improving)."]
    rising = known[known.still_improving > 0]
    if rising.empty:
        return [f"None of the {len(known)} models with a convergence flag was still improving when it stopped."]
    name = namer(evaluations)
    names = ", ".join(sorted(f"{_name(r, name)} (seed {r.model_seed})" for r in rising.itertuples()))
    return [f"{len(rising)} of {len(known)} models were still improving when they stopped: {names}; their quality "
            "reflects their training budget as well as their size."]


def pareto_sizes(table: pd.DataFrame) -> list[str]:
    """The Pareto front in parameters vs FID, one sentence per resolution."""
    name = namer(table)
    return ["Pareto-optimal in parameters vs FID: "
            + ", ".join(f"{r.size_factor:g} {name(*kind_of(r))} ({int(r.num_parameters):,} params, "
                        f"FID {r.fid:.3g})" for r in front.itertuples()) + "."
            for _, front in frontier(table, "num_parameters", "fid").groupby("image_size", sort=False)]


def problem_summary(problems: pd.DataFrame) -> list[str]:
    if problems.empty:
        return ["Every model run finished and has a complete evaluation."]
    counts = problems.problem.str.split(":").str[0].value_counts()
    return [f"{len(problems)} runs are listed under Problems ("
            + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + "); a value they lack is n/a, never 0."]


def _name(row, name) -> str:
    """A row's model in a sentence; `name`: namer() of the rows it is among."""
    return ("the teacher" if row.method == "teacher"
            else f"size {row.size_factor:g} {name(*kind_of(row))}")


def floor_comparison(evaluations: pd.DataFrame) -> list[str]:
    """Which models' KID (matched N, the headline comparison) is inside the real-vs-real floor's spread."""
    needed = ["kid", "kid_floor", "kid_floor_sd"]
    name = namer(evaluations)
    rows = with_keys(evaluations).reindex(columns=[*GROUP, "quality_n", *needed]).dropna(subset=needed)
    if rows.empty:
        return ["No evaluation has a matched-N KID and floor."]
    inside = rows[(rows.kid - rows.kid_floor).abs() <= FLOOR_SPREAD * rows.kid_floor_sd]
    names = ", ".join(sorted({_name(r, name) for r in inside.itertuples()})) or "none"
    return [f"KID inside the spread of the real-vs-real floor (within {FLOOR_SPREAD:g} sd over draws, N = "
            f"{', '.join(f'{n:g}' for n in sorted(rows.quality_n.unique()))} a side): {names}."]


def memorisation_signs(evaluations: pd.DataFrame) -> list[str]:
    """Copy rates far above chance, and KID clearly worse against held-out images than against the train split."""
    lines, name = [], namer(evaluations)
    for row in with_keys(evaluations).reindex(columns=[*GROUP, "copy_rate_pixel", "copy_rate_feature", "kid_train",
                                                       "kid_heldout", "kid_sd_train", "kid_sd_heldout"]).itertuples():
        rate = np.nanmax([row.copy_rate_pixel, row.copy_rate_feature, -1.0])
        if rate > COPY_ALARM:
            lines.append(f"{_name(row, name)}: copy rate {rate:.2f} (chance 0.01): its samples copy training images.")
        gap = row.kid_heldout - row.kid_train
        if gap > FLOOR_SPREAD * np.hypot(row.kid_sd_train, row.kid_sd_heldout):
            lines.append(f"{_name(row, name)}: KID against held-out images {row.kid_heldout:.3g} vs "
                         f"{row.kid_train:.3g} against its train split: a memorisation sign.")
    measured = evaluations.reindex(columns=["copy_rate_pixel"]).copy_rate_pixel.notna().any()
    if not lines and measured:
        lines.append(f"No evaluation shows memorisation: copy rates at most {COPY_ALARM:g} (chance 0.01) and no "
                     "held-out KID clearly above the train-split KID.")
    return lines


def findings(table: pd.DataFrame, evaluations: pd.DataFrame, problems: pd.DataFrame, models: pd.DataFrame,
             computed: list[str] = ()) -> list[str]:
    """Every finding; `computed` are sentences other sections worked out (scaling law, budget frontier)."""
    evaluations = with_keys(evaluations)
    return (seeds_statement(evaluations, models) + smallest_near_teacher(table) + distill_vs_scratch(table, evaluations)
            + pruned_vs_random(evaluations) + still_improving(evaluations) + list(computed)
            + floor_comparison(evaluations) + memorisation_signs(evaluations) + pareto_sizes(table)
            + problem_summary(problems))
