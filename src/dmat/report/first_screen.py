"""The report's first screen: the answer in one sentence, the figure it rests on, a paper-style results table, and
what the study cannot conclude.

The answer is read on the study's main line (MAIN_LINE: distilled from the pruned teacher, or the kind with the most
sizes), in both feature spaces: the smallest size each KID shows within 10% of the teacher by the fixed sequence of
`answer.shown_within`, and the larger of the two (a verdict needs both spaces). In a space where the teacher is inside
the real-vs-real floor (a converged teacher's classifier KID is), a ratio to it is noise over noise: there a size
comes within 10% by being inside the floor too, by the same fixed sequence. A pruned student of size 1 is the
teacher's own weights trained on: it is never the answer, and the sentence then says plainly that no smaller student
came within 10%.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from dmat.config.metrics import format_value
from dmat.config.study import MAIN_LINE
from dmat.config.training import PRUNED
from dmat.report import study_kind
from dmat.report.answer import WITHIN, Near, SizeRatio, near_teacher
from dmat.report.realness import FLOOR_SPREAD
from dmat.report.sections import Inputs, Section
from dmat.report.tables import kind_of

SPACES = {"kid": "random-CNN KID", "kid_classifier": "classifier KID"}  # the two feature spaces of a verdict


def is_teacher_again(size: SizeRatio) -> bool:
    """A pruned size-1 student: the teacher's weights, trained on (no size was removed)."""
    return size.size >= 1.0 and (size.runs.get("init", pd.Series(dtype=object)) == PRUNED).all()


def main_line(nears: list[Near]) -> Near | None:
    """The Near of the study's main line: MAIN_LINE's kind where measured, else the kind with the most sizes."""
    if not nears:
        return None
    return max(nears, key=lambda n: (tuple(n.kind[:2]) == MAIN_LINE, len(n.sizes)))


def _candidate(near: Near) -> SizeRatio | None:
    """The size the fixed sequence shows within WITHIN, unless it is the teacher under another name."""
    shown = near.shown
    return None if shown is None or is_teacher_again(shown) else shown


def _ratio(size: SizeRatio) -> str:
    ratio, low, high = size.ratio
    interval = f", 95% interval {low:.2f}x to {high:.2f}x" if np.isfinite(low) else ", no interval"
    return f"{ratio:.2f}x the teacher's{interval}"


def _spread(near: Near) -> str:
    seeds = max(s.student.n for s in near.sizes)
    return f"over {seeds} seeds per size" if seeds > 1 else "one seed per size: intervals over evaluation draws only"


def teacher_at_floor(evaluations: pd.DataFrame, metric: str) -> bool:
    """Whether the teacher's `metric` is inside its real-vs-real floor's spread (within FLOOR_SPREAD floor sd, or not
    positive): as good as real images by that score, so a ratio to it is noise over noise, no measure."""
    teacher = evaluations[evaluations.method == "teacher"].reindex(
        columns=[metric, f"{metric}_floor", f"{metric}_floor_sd"]).mean()
    if not np.isfinite(teacher[metric]):
        return False
    return bool(teacher[metric] <= 0 or teacher[metric] - teacher[f"{metric}_floor"]
                <= FLOOR_SPREAD * teacher[f"{metric}_floor_sd"])


def inside_floor(size: SizeRatio, metric: str) -> bool:
    """Whether a size's mean `metric` over its seeds is inside the floor's spread, as the teacher's is."""
    runs = size.runs.reindex(columns=[metric, f"{metric}_floor", f"{metric}_floor_sd"]).mean()
    return bool(runs[metric] - runs[f"{metric}_floor"] <= FLOOR_SPREAD * runs[f"{metric}_floor_sd"])


def _at_floor_candidate(near: Near, metric: str) -> SizeRatio | None:
    """Where the teacher is at the floor: the smallest size of the fixed sequence from the largest down in which
    every size is inside the floor too, unless it is the teacher under another name."""
    passed = None
    for size in sorted(near.sizes, key=lambda s: -s.size):
        if not inside_floor(size, metric):
            break
        passed = size
    return None if passed is None or is_teacher_again(passed) else passed


def headline(evaluations: pd.DataFrame) -> str:
    """The study's answer in one sentence (both feature spaces, the main line), or why there is none. In a space
    where the teacher is inside the real-vs-real floor, a student comes within 10% of it by being inside it too."""
    nears = {metric: main_line(near_teacher(evaluations, metric)[0]) for metric in SPACES}
    floors = {metric: teacher_at_floor(evaluations, metric) for metric in SPACES}
    near = nears["kid"]
    if near is None:
        return "No student could be compared with the teacher: there is no answer yet."
    if nears["kid_classifier"] is None and not floors["kid_classifier"]:
        return (f"Only the random-CNN features scored these models, so no size is said to be within {WITHIN:.0%} of "
                "the teacher (a verdict needs both feature spaces).")
    shown = {metric: _at_floor_candidate(near, metric) if floors[metric] else _candidate(nears[metric])
             for metric in SPACES}
    at_floor = [SPACES[m] for m in SPACES if floors[m]]
    floor_note = (f" (the teacher's {' and '.join(at_floor)} is inside the real-vs-real floor: there a student "
                  "matches it by being inside the floor too)") if at_floor else ""
    if None in shown.values():
        blind = [SPACES[m] for m, s in shown.items() if s is None]
        closest = min((s for s in near.sizes if not is_teacher_again(s)), key=lambda s: s.ratio[0], default=None)
        detail = f"; closest by the random-CNN KID: size {closest.size:g}, {_ratio(closest)}" if closest else ""
        return (f"No smaller student of the main line ({near.name}) came within {WITHIN:.0%} of the teacher in both "
                f"feature spaces (not shown by the {' nor the '.join(blind)}){floor_note}{detail}.")
    size = max(shown.values(), key=lambda s: s.size)
    pair = {m: next(s for s in (nears[m] or near).sizes if s.size == size.size) for m in SPACES}
    share = near.shares(size).get("num_parameters", np.nan)
    who = f"A student with {share:.0%} of the teacher's parameters" if np.isfinite(share) else "A student"
    bound = " at most" if near.improving[0] else ""
    said = {m: "inside the real-vs-real floor, like the teacher's" if floors[m] else _ratio(pair[m]) for m in SPACES}
    return (f"{who} (size{bound} {size.size:g}, {near.name}) comes within {WITHIN:.0%} of the teacher's KID in both "
            f"feature spaces: {SPACES['kid']} {said['kid']}; {SPACES['kid_classifier']} {said['kid_classifier']} "
            f"({_spread(near)}).")


def _cell(mean: float, half: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if np.isfinite(half) else f"{mean:.{digits}f}"


def results_table(table: pd.DataFrame, evaluations: pd.DataFrame, latency: str) -> pd.DataFrame:
    """The paper-style table: teacher and each student row of the summary table at the teacher's resolution, eight
    columns with units, mean ± 95% half-width over seeds, the ratio of KID to the teacher's with its interval, the
    report's one latency per image (`latency`: its label, speed.one_latency); the best student value of each quality
    column marked with *."""
    ratios = {(n.kind, s.size): s.ratio for n in near_teacher(evaluations, "kid")[0] for s in n.sizes}
    rows = []
    for row in table.itertuples():
        ratio = ratios.get((kind_of(row), row.size_factor), (1.0, np.nan, np.nan))  # like with like: every key
        rows.append({
            "model": "teacher" if row.method == "teacher" else f"{row.method}, {row.init} init, size {row.size_factor:g}",
            "params (M)": f"{row.num_parameters / 1e6:.3f}",
            "FLOPs / step (M)": f"{row.flops_per_forward / 1e6:.1f}",
            "KID ↓ (×10⁻³)": _cell(1e3 * row.kid, 1e3 * row.kid_ci95, 2),
            "FID ↓": format_value("fid", row.fid, row.fid_ci95),
            "KID / teacher (95% interval)": "1 (reference)" if row.method == "teacher" else
            f"{ratio[0]:.2f}" + (f" [{ratio[1]:.2f}, {ratio[2]:.2f}]" if np.isfinite(ratio[1]) else ""),
            f"latency ({latency})": _cell(row.latency_ms_per_image, row.latency_ms_per_image_ci95, 1),
            "epochs run": _cell(getattr(row, "epochs_run", np.nan), np.nan, 0)})
    out = pd.DataFrame(rows)
    students = table.method != "teacher"
    for column, metric in (("KID ↓ (×10⁻³)", "kid"), ("FID ↓", "fid")):
        if students.any() and table.loc[students, metric].notna().any():
            best = table.loc[students, metric].idxmin()
            out.loc[best, column] = f"{out.loc[best, column]} *"
    return out


def ratio_figure(evaluations: pd.DataFrame):
    """KID / teacher's KID against the share of the teacher's parameters, one panel per feature space: each kind's
    sizes with their 95% intervals, the teacher at 1 and the 10% line a verdict is read against."""
    panels = {metric: near_teacher(evaluations, metric)[0] for metric in SPACES}
    if not panels["kid"]:
        return None
    fig, axes = plt.subplots(1, len(SPACES), figsize=(11, 3.8), sharey=True)
    for ax, (metric, nears) in zip(axes, panels.items()):
        for near in nears:
            sizes = sorted(near.sizes, key=lambda s: s.size)
            x = [near.shares(s).get("num_parameters", s.size) for s in sizes]
            y = np.array([s.ratio for s in sizes])
            # a log axis: an interval reaching below 0 is drawn down to a tenth of its ratio
            low = np.clip(y[:, 0] - y[:, 1], 0, 0.9 * y[:, 0])
            err = np.stack([low, y[:, 2] - y[:, 0]]) if np.isfinite(y[:, 1:]).all() else None
            ax.errorbar(x, y[:, 0], yerr=err, marker="o" if tuple(near.kind[:2]) == MAIN_LINE else "s", capsize=3,
                        label=near.name, lw=2 if tuple(near.kind[:2]) == MAIN_LINE else 1)
        ax.axhline(1.0, color="black", lw=1, label="teacher")
        ax.axhline(1 + WITHIN, color="black", ls="--", lw=1, label=f"teacher + {WITHIN:.0%}")
        ax.set(xscale="log", yscale="log", xlabel="share of the teacher's parameters",
               title=f"{SPACES[metric]} / the teacher's",
               ylabel="ratio to the teacher (lower is better)" if metric == "kid" else None)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        if not nears:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def answer_section(section: Section, i: Inputs) -> None:
    """The first screen: the answer in one sentence, the paper-style table, the figure it is read on."""
    section.notes.append(headline(i.evals))
    section.tables.append(results_table(i.table, i.evals, i.latency))
    section.figure("answer_ratio_vs_size", ratio_figure(i.evals), "no student can be compared with the teacher")


def caveats_section(section: Section, i: Inputs) -> None:
    """The study's kind and what it cannot conclude (the quick study says so), right below the answer."""
    section.items = study_kind.banner(study_kind.preset_of(i.experiment_id), i.study.models, i.study.evaluations)
    if not section.items:
        section.notes.append("Nothing found: every model converged, with several seeds, both inits and methods.")
