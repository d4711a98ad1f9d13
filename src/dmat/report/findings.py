"""Findings written from the data: sentences computed from the summary table, nothing hand-written.

Models are compared only at one resolution: a model's KID and FID are against real images of its own size, in
features trained at it, so a 16 px student's FID says nothing against a 32 px teacher's. Students are compared with
each other only at one training budget (epochs), so that a difference is one of method or init, not of budget; the
teacher is the reference whatever its budget. A direction ("better") is claimed only where a Welch t-test over seeds,
Holm-corrected over the comparisons of its family (one finding's lines), is significant at 5%: never for single runs.
The smallest size near the teacher comes with its interval, the teacher's own spread included (report/answer.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dmat.config.training import PRUNED, RANDOM
from dmat.report.answer import near_sentence, near_teacher
from dmat.report.frontier import frontier
from dmat.report.realness import class_mix, floor_comparison, memorisation_signs, row_name
from dmat.report.tables import GROUP, kind_of, namer, with_keys



def smallest_near_teacher(evaluations: pd.DataFrame) -> list[str]:
    """Per student kind, the smallest size within 10% of the teacher's FID, then KID, with the interval of its
    ratio to the teacher (the teacher's own spread included) and, in the sentence, whether it is an upper bound."""
    lines = []
    for metric in ("fid", "kid"):
        nears, apart = near_teacher(evaluations, metric)
        lines += apart + [near_sentence(near) for near in nears]
    return lines


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of one family's p-values (NaN: no test, left out of the family)."""
    p = np.asarray(pvalues, dtype=float)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested])]
    adjusted, running = np.full(len(p), np.nan), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _verdict(a: pd.Series, b: pd.Series, names: tuple[str, str], p: float, adjusted: float, family: int) -> str:
    """A direction only where a Welch test over seeds, Holm-adjusted over its family, is significant at 5%."""
    if min(len(a), len(b)) < 2:
        return "no direction claimed (single runs: no test possible)"
    if not np.isfinite(p):
        return "no direction claimed (no spread over seeds to test)"
    test = (f"Welch t-test over seeds, n={len(a)} vs {len(b)}, p={p:.2g}"
            + (f", Holm-adjusted over {family} comparisons p={adjusted:.2g}" if family > 1 else ""))
    if adjusted >= 0.05:
        return f"no difference shown ({test}: not significant at 5%)"
    return f"{names[0] if a.mean() < b.mean() else names[1]} better ({test})"


def _tests(evaluations: pd.DataFrame, column: str, sides: tuple, within: dict, subject: str = "") -> list[tuple]:
    """Per model of both `sides` (values) of `column` (like with like: one resolution, budget and size, and `within`,
    e.g. one init): (where, a's FIDs, b's FIDs, Welch p over seeds or NaN where untestable); where = "size 0.5" +
    `subject`, with the resolution and budget where there are several."""
    rows, name = with_keys(evaluations), namer(evaluations)
    for key, value in within.items():
        rows = rows[rows[key] == value]
    rows = rows.assign(fid=rows.get("fid", np.nan))
    like = [key for key in GROUP if key != column and key not in within]  # (image_size, epochs, size_factor)
    found = []
    for keys, group in sorted(rows.groupby(like), key=lambda item: (-item[0][0], *item[0][1:])):  # larger images first
        if not set(sides) <= set(group[column]):
            continue
        a, b = (group.fid[group[column] == v].dropna() for v in sides)
        tested = min(len(a), len(b)) >= 2 and (a.std() > 0 or b.std() > 0)
        found.append((name(f"size {keys[-1]:g}{subject}", None, *keys[:-1]), a, b,
                      stats.ttest_ind(a, b, equal_var=False).pvalue if tested else np.nan))
    return found


def _family(found: list[tuple], names: tuple[str, str], wording: str) -> list[str]:
    """The sentences of one family of tests (_tests rows), Holm-corrected together; `wording` formats each with
    where, a, b (mean FIDs) and verdict."""
    adjusted = holm([p for *_, p in found])
    family = int(np.isfinite(adjusted).sum())
    lines = []
    for (where, a, b, p), p_holm in zip(found, adjusted):
        if a.empty or b.empty:
            lines.append(f"{where}: FID missing on one side, no comparison.")
            continue
        verdict = _verdict(a, b, names, p, p_holm, family)
        lines.append(wording.format(where=where, a=a.mean(), b=b.mean(), verdict=verdict))
    return lines


def distill_vs_scratch(table: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """Per init and size (and resolution and budget) with both methods from one start: the FID difference, with a
    Welch t-test over seeds, Holm-corrected over every init and size (a study whose ablation trains scratch only from
    the pruned start compares it with distillation from the pruned start)."""
    rows = with_keys(evaluations)
    found = [test for init in sorted(set(rows[rows.method == "scratch"].init))
             for test in _tests(rows, "method", ("distill", "scratch"), {"init": init},
                                "" if init == RANDOM else f", {init} init")]
    lines = _family(found, ("distillation", "scratch"), "{where}: distilled FID {a:.3g} vs scratch {b:.3g}: {verdict}.")
    return lines or ["No size has both distilled and scratch students with evaluations."]


def pruned_vs_random(evaluations: pd.DataFrame) -> list[str]:
    """Per method and size (and resolution and budget) with both inits: the FID of students started from the pruned
    teacher against random, Holm-corrected over every method and size."""
    rows = with_keys(evaluations)
    found = [test for method in sorted(set(rows[rows.init == PRUNED].method))
             for test in _tests(rows, "init", (PRUNED, RANDOM), {"method": method}, f" {method}")]
    return _family(found, ("pruned init", "random init"),
                   "{where}: pruned-init FID {a:.3g} vs random-init {b:.3g}: {verdict}.")


def seeds_statement(evaluations: pd.DataFrame, models: pd.DataFrame) -> list[str]:
    """What the repeats of one model (GROUP: method, init, resolution, budget, size) vary, read from the runs."""
    students = with_keys(evaluations[evaluations.method != "teacher"]).reindex(columns=[*GROUP, "model_seed"])
    seeds = sorted(students.model_seed.dropna().unique(), key=str)
    # training runs, as the summary's `seeds` column counts them: two evaluations of one model are not two runs
    repeats = students.groupby(GROUP).model_seed.nunique()
    teachers = models[(models.role == "teacher") & (models.status == "FINISHED")]
    teacher = ("one teacher run is shared by every student, so no interval includes the teacher's own seed"
               if len(teachers) <= 1 else f"{len(teachers)} teacher runs")
    if repeats.empty or repeats.max() < 2:
        return [f"One run per size and method ({_seeds_text(seeds)}): no interval over seeds; {teacher}."]
    sampling = sorted(evaluations.get("seed", pd.Series(dtype=object)).dropna().unique(), key=str)
    same = ("every evaluation samples with the same evaluation seed" if len(sampling) == 1 else
            f"evaluations sample with {len(sampling)} evaluation seeds ({', '.join(map(str, sampling))})"
            if sampling else "the evaluation seeds are not logged")
    return [f"Seeds: {repeats.min()} to {repeats.max()} runs per size and method ({_seeds_text(seeds)}); a student's "
            f"seed sets its initial weights (random init) and the order of its training data; {teacher}; {same}. "
            "Intervals are 95% t-intervals over these runs."]


def _seeds_text(seeds: list) -> str:
    """The students' training seeds as values, never to be read as a count beside the summary's `seeds` column."""
    if not seeds:
        return "training seeds not logged"
    return f"training seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


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
    names = ", ".join(sorted(f"{row_name(r, name)} (seed {r.model_seed})" for r in rising.itertuples()))
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


def findings(table: pd.DataFrame, evaluations: pd.DataFrame, problems: pd.DataFrame, models: pd.DataFrame,
             computed: list[str] = ()) -> list[str]:
    """Every finding; `computed` are sentences other sections worked out (scaling law, budget frontier), less those
    that say they are not one (an extrapolated size needed: the scaling section states it, labelled)."""
    evaluations = with_keys(evaluations)
    computed = [line for line in computed if "not a finding" not in line]
    return (seeds_statement(evaluations, models) + smallest_near_teacher(evaluations)
            + distill_vs_scratch(table, evaluations)
            + pruned_vs_random(evaluations) + still_improving(evaluations) + computed
            + floor_comparison(evaluations) + class_mix(evaluations) + memorisation_signs(evaluations)
            + pareto_sizes(table)
            + problem_summary(problems))
