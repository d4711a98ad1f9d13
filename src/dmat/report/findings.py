"""Findings written from the data: sentences computed from the summary table, nothing hand-written."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dmat.report.tables import pareto_mask

WITHIN = 0.10  # "close to the teacher" = FID at most 10% above the teacher's
FLOOR_SPREAD = 2.0  # "inside the floor's spread" = KID within 2 sd (over draws) of the real-vs-real floor
COPY_ALARM = 0.05  # a copy rate of 5x chance (1%, memorisation.COPY_PERCENTILE) flags memorisation


def _fmt(mean: float, ci: float) -> str:
    return f"{mean:.3g} ± {ci:.2g}" if np.isfinite(ci) else f"{mean:.3g}"


def smallest_near_teacher(table: pd.DataFrame) -> list[str]:
    teacher = table[table.method == "teacher"].fid.dropna()
    if teacher.empty:
        return ["The teacher has no FID evaluation, so no size can be compared with it."]
    limit = (1 + WITHIN) * teacher.iloc[0]
    lines = []
    for method, group in table[table.method != "teacher"].groupby("method"):
        close = group[group.fid <= limit].sort_values("size_factor")
        if close.empty:
            best = group.dropna(subset=["fid"]).sort_values("fid").head(1)
            detail = f" (best: size {best.size_factor.iloc[0]:g}, FID {best.fid.iloc[0]:.3g})" if len(best) else ""
            lines.append(f"{method}: no size is within {WITHIN:.0%} of the teacher's FID {teacher.iloc[0]:.3g}{detail}.")
            continue
        row = close.iloc[0]
        share = row.num_parameters / table[table.method == "teacher"].num_parameters.iloc[0]
        lines.append(f"{method}: the smallest size within {WITHIN:.0%} of the teacher's FID {teacher.iloc[0]:.3g} is "
                     f"{row.size_factor:g} (FID {_fmt(row.fid, row.fid_ci95)}, n={row.n}, {share:.0%} of the "
                     "teacher's parameters).")
    return lines


def distill_vs_scratch(table: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """Per size with both methods: the FID difference, with a Welch t-test where both have n >= 2."""
    lines = []
    both = set(table[table.method == "distill"].size_factor) & set(table[table.method == "scratch"].size_factor)
    for size in sorted(both):
        fids = {m: evaluations[(evaluations.method == m) & (evaluations.size_factor == size)].get("fid",
                pd.Series(dtype=float)).dropna() for m in ("distill", "scratch")}
        if fids["distill"].empty or fids["scratch"].empty:
            lines.append(f"size {size:g}: FID missing for one method, no comparison.")
            continue
        d, s = fids["distill"].mean(), fids["scratch"].mean()
        verdict = "distillation better" if d < s else "scratch better" if s < d else "equal"
        if min(len(fids["distill"]), len(fids["scratch"])) >= 2:
            p = stats.ttest_ind(fids["distill"], fids["scratch"], equal_var=False).pvalue
            verdict += f" (Welch t-test p={p:.2g}{'' if p < 0.05 else ', not significant at 5%'})"
        else:
            verdict += " (single runs: no test possible)"
        lines.append(f"size {size:g}: distilled FID {d:.3g} vs scratch {s:.3g}: {verdict}.")
    return lines or ["No size has both distilled and scratch students with evaluations."]


def pareto_sizes(table: pd.DataFrame) -> list[str]:
    points = table.dropna(subset=["num_parameters", "fid"])
    front = points[pareto_mask(points.num_parameters, points.fid)].sort_values("num_parameters")
    if front.empty:
        return []
    return ["Pareto-optimal in parameters vs FID: "
            + ", ".join(f"{r.size_factor:g} {r.method} ({int(r.num_parameters):,} params, FID {r.fid:.3g})"
                        for r in front.itertuples()) + "."]


def problem_summary(problems: pd.DataFrame) -> list[str]:
    if problems.empty:
        return ["Every model run finished and has a complete evaluation."]
    counts = problems.problem.str.split(":").str[0].value_counts()
    return [f"{len(problems)} runs are listed under Problems ("
            + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + "); a value they lack is n/a, never 0."]


def _name(row) -> str:
    return "the teacher" if row.method == "teacher" else f"size {row.size_factor:g} {row.method}"


def floor_comparison(evaluations: pd.DataFrame) -> list[str]:
    """Which models' KID (matched N, the headline comparison) is inside the real-vs-real floor's spread."""
    needed = ["kid", "kid_floor", "kid_floor_sd"]
    rows = evaluations.reindex(columns=["method", "size_factor", "quality_n", *needed]).dropna(subset=needed)
    if rows.empty:
        return ["No evaluation has a matched-N KID and floor."]
    inside = rows[(rows.kid - rows.kid_floor).abs() <= FLOOR_SPREAD * rows.kid_floor_sd]
    names = ", ".join(sorted({_name(r) for r in inside.itertuples()})) or "none"
    return [f"KID inside the spread of the real-vs-real floor (within {FLOOR_SPREAD:g} sd over draws, N = "
            f"{', '.join(f'{n:g}' for n in sorted(rows.quality_n.unique()))} a side): {names}."]


def memorisation_signs(evaluations: pd.DataFrame) -> list[str]:
    """Copy rates far above chance, and KID clearly worse against held-out images than against the train split."""
    lines = []
    for row in evaluations.reindex(columns=["method", "size_factor", "copy_rate_pixel", "copy_rate_feature",
                                            "kid_train", "kid_heldout", "kid_sd_train", "kid_sd_heldout"]).itertuples():
        rate = np.nanmax([row.copy_rate_pixel, row.copy_rate_feature, -1.0])
        if rate > COPY_ALARM:
            lines.append(f"{_name(row)}: copy rate {rate:.2f} (chance 0.01): its samples copy training images.")
        gap = row.kid_heldout - row.kid_train
        if gap > FLOOR_SPREAD * np.hypot(row.kid_sd_train, row.kid_sd_heldout):
            lines.append(f"{_name(row)}: KID against held-out images {row.kid_heldout:.3g} vs {row.kid_train:.3g} "
                         "against its train split: a memorisation sign.")
    measured = evaluations.reindex(columns=["copy_rate_pixel"]).copy_rate_pixel.notna().any()
    if not lines and measured:
        lines.append(f"No evaluation shows memorisation: copy rates at most {COPY_ALARM:g} (chance 0.01) and no "
                     "held-out KID clearly above the train-split KID.")
    return lines


def findings(table: pd.DataFrame, evaluations: pd.DataFrame, problems: pd.DataFrame) -> list[str]:
    return (smallest_near_teacher(table) + distill_vs_scratch(table, evaluations) + floor_comparison(evaluations)
            + memorisation_signs(evaluations) + pareto_sizes(table) + problem_summary(problems))
