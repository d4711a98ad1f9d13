"""Matplotlib figures of models against size and cost (Agg backend, no display needed), and the style every figure
of the report shares; per-step curves, heatmaps and image panels are `dmat.report.curves`'.

Each function takes tables from `query`/`tables` and returns a Figure, or None when there is
nothing to plot; missing values are left out of a plot, never drawn as 0. Colour encodes the size
factor (the same in every figure), line style the method. Each resolution and each training budget (epochs) is a
series of its own, never joined to or averaged with another (a resolution's quality is against real images of its
own size; a longer budget is another model); where a figure shows several, its labels say which and, where colour
is the size, lower resolutions have hollow markers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter  # noqa: E402

from dmat.config.metrics import GRID_QUALITIES, better_text  # noqa: E402
from dmat.config.training import PRUNED  # noqa: E402
from dmat.report.frontier import frontier  # noqa: E402
from dmat.report.tables import KIND, namer, pareto_mask, with_keys  # noqa: E402

LINESTYLE = {"distill": "-", "scratch": "--", "teacher": ":"}
MARKER = {"distill": "o", "scratch": "s", "teacher": "*"}
INIT_MARKER = {PRUNED: "D"}  # a pruned start: diamonds (random: the method's marker)
STUDENT_METHODS = ("distill", "scratch")


def readable_log_x(ax) -> None:
    """A log x axis of counts (parameters, FLOPs) labelled at 1, 2 and 5 of each decade as 20k, 1M, 2T: matplotlib
    labels every minor tick of an axis spanning about a decade, and those labels run into each other."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def size_color(size: float):
    return "black" if size >= 1.0 else plt.cm.viridis(0.9 * float(size))


def _marker(method: str, init: str) -> str:
    return INIT_MARKER.get(init, MARKER.get(method, "^"))


def hollow(image_size: float, frame: pd.DataFrame) -> bool:
    """Whether a model at `image_size` is below the largest resolution of `frame` (drawn with hollow markers)."""
    return image_size < frame.image_size.max()


def _students(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.method != "teacher"]


def teacher_value(table: pd.DataFrame, column: str) -> float:
    teacher = table[table.method == "teacher"][column].dropna()
    return float(teacher.iloc[0]) if len(teacher) else np.nan


def errorbar_by_method(ax, table: pd.DataFrame, x: str, y: str) -> None:
    """Mean per size, one line per method, init, resolution and budget; a 95% interval only where one exists (a
    single evaluation has none, and gets no bar rather than a zero-length one that would read as certainty)."""
    name = namer(table)
    for kind, group in with_keys(_students(table)).groupby(KIND):
        group = group.dropna(subset=[x, y]).sort_values(x)
        if group.empty:
            continue
        method, init = kind[:2]
        line, = ax.plot(group[x], group[y], marker=_marker(method, init),
                        linestyle=LINESTYLE.get(method, "-."), label=name(*kind))
        known = group[np.isfinite(group[f"{y}_ci95"].astype(float))]
        if len(known):
            ax.errorbar(known[x], known[y], yerr=known[f"{y}_ci95"], fmt="none", capsize=3, color=line.get_color())


def _reference_lines(ax, table: pd.DataFrame, metric: str, floor: str | None) -> None:
    """Per resolution: the teacher's value, and the real-vs-real floor as its mean with a band of ± its sd over
    draws (a floor is of real images of one size: never averaged across resolutions)."""
    name = namer(table)
    for px, rows in with_keys(table).groupby("image_size"):
        teacher = teacher_value(rows, metric)
        if np.isfinite(teacher):
            ax.axhline(teacher, color="black", linestyle=":", label=f"{name('teacher', None, px)} ({teacher:.3g})")
        if floor and floor in rows.columns and rows[floor].notna().any():
            value = float(rows[floor].mean())
            ax.axhline(value, color="grey", linestyle="-.",
                       label=f"{name('real-vs-real floor', None, px)} ({value:.3g})")
            sd = float(rows[f"{floor}_sd"].mean()) if f"{floor}_sd" in rows.columns else np.nan
            if np.isfinite(sd):
                ax.axhspan(value - sd, value + sd, color="grey", alpha=0.2,
                           label=name("floor ± sd over draws", None, px))


def quality_figure(table: pd.DataFrame):
    """KID (the headline) and FID against parameters (log x), both at matched N: distill vs scratch,
    teacher line, real-vs-real floor band."""
    if not table.reindex(columns=list(GRID_QUALITIES)).notna().any().any():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, GRID_QUALITIES):
        label = metric.upper()
        errorbar_by_method(ax, table, "num_parameters", metric)
        _reference_lines(ax, table, metric, f"{metric}_floor")
        ax.set(xscale="log", xlabel="parameters", ylabel=f"{label} at matched N ({better_text(metric)})",
               title=f"{label} vs size")
        readable_log_x(ax)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def efficiency_figure(table: pd.DataFrame):
    """FID against parameters and against the latency per image; Pareto-optimal sizes (of each resolution) ringed and
    labelled."""
    if not table.fid.notna().any():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    name = namer(table)
    for ax, cost, label, scale in ((axes[0], "num_parameters", "parameters", "log"),
                                   (axes[1], "latency_ms_per_image", "latency (ms / image)", "linear")):
        errorbar_by_method(ax, table, cost, "fid")
        teacher = table[table.method == "teacher"].dropna(subset=[cost, "fid"])
        ax.scatter(teacher[cost], teacher.fid, marker="*", s=150, color="black", label="teacher", zorder=3)
        for px, front in frontier(table, cost, "fid").groupby("image_size", sort=False):
            ax.plot(front[cost], front.fid, color="red", linestyle=":", linewidth=1)
            ax.scatter(front[cost], front.fid, s=180, facecolors="none", edgecolors="red",
                       label=name("Pareto-optimal", None, px), zorder=4)
            for _, row in front.iterrows():
                ax.annotate(f"{row.size_factor:g} {name(row.method, None, px, row.epochs)}", (row[cost], row.fid),
                            textcoords="offset points", xytext=(6, 6), fontsize=8, color="red")
        ax.set(xscale=scale, xlabel=label, ylabel="FID", title=f"quality vs {label}")
        if scale == "log":
            readable_log_x(ax)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(trials: pd.DataFrame, study_name: str):
    """One Optuna study's evaluated trials, FID against parameters, with the Pareto front."""
    points = trials.dropna(subset=["num_parameters", "fid"])
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(points.num_parameters, points.fid, c=points.size_factor, cmap="viridis", s=30, label="trial")
    front = points[pareto_mask(points.num_parameters, points.fid)].sort_values("num_parameters")
    ax.plot(front.num_parameters, front.fid, color="red", linestyle=":", marker="o", mfc="none", ms=10,
            label="Pareto front")
    for _, row in front.iterrows():
        ax.annotate(f"#{int(row.trial)}", (row.num_parameters, row.fid), textcoords="offset points", xytext=(5, 5),
                    fontsize=8, color="red")
    fig.colorbar(sc, ax=ax, label="size factor")
    ax.set(xscale="log", xlabel="parameters", ylabel=f"FID ({better_text('fid')})", title=f"sweep {study_name}")
    readable_log_x(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scaling_figure(panels: list[dict]):
    """One panel per (quality, size measure): each run a point, each series' fitted law and its 95% bootstrap band
    (series without a fit: points only), the teacher as a star and 1.1 x its value dotted. A panel is a dict:
    title, x_label, points (x, y, method, init, series: the label of its fit), fits {series: Fit}, teacher (x, y)."""
    if not panels:
        return None
    cols = 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for series, group in panel["points"].groupby("series", sort=False):
            method, init = group.method.iloc[0], group.init.iloc[0]
            style = dict(marker=_marker(method, init), linestyle="none", alpha=0.7)
            dots, = ax.plot(group.x, group.y, label=series, **style)
            fit = panel["fits"].get(series)
            if fit is not None and fit.problem is None:
                grid = np.geomspace(group.x.min(), max(group.x.max(), panel["teacher"][0]), 100)
                low, high = fit.band(grid)
                ax.plot(grid, fit.predict(grid), color=dots.get_color(), label=f"fit, alpha {fit.alpha:.2f}")
                ax.fill_between(grid, low, high, color=dots.get_color(), alpha=0.2, linewidth=0)
        tx, ty = panel["teacher"]
        if np.isfinite(tx) and np.isfinite(ty):
            ax.scatter([tx], [ty], marker="*", s=150, color="black", label="teacher", zorder=3)
            ax.axhline(1.1 * ty, color="black", linestyle=":", linewidth=1, label="1.1 x teacher")
        ax.set(xscale="log", xlabel=panel["x_label"], ylabel=panel["title"], title=f"{panel['title']} vs {panel['x_label']}")
        readable_log_x(ax)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def frontier_figure(points: pd.DataFrame, fronts: dict[tuple[str, str], pd.DataFrame], costs: dict[str, str]):
    """Quality (rows: KID, FID) against sampling cost per image (columns), every (size, steps) point coloured by
    size with its step count beside it, the teacher's as stars; each resolution's Pareto frontier in red."""
    qualities = [q for q in GRID_QUALITIES if points[q].notna().any()]
    if not qualities:
        return None
    points, name = with_keys(points), namer(points)
    fig, axes = plt.subplots(len(qualities), len(costs), figsize=(12, 4.2 * len(qualities)), squeeze=False)
    for r, quality in enumerate(qualities):
        for c, (cost, cost_label) in enumerate(costs.items()):
            ax = axes[r, c]
            shown = points.dropna(subset=[cost, quality])
            for _, row in shown.iterrows():
                color = size_color(row.size_factor)
                ax.plot(row[cost], row[quality], color=color, marker=_marker(row.method, row.init), markersize=7,
                        markerfacecolor="none" if hollow(row.image_size, points) else color, linestyle="none")
                ax.annotate(f"{row.steps:g}", (row[cost], row[quality]), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
            for i, (px, front) in enumerate(fronts[(quality, cost)].groupby("image_size", sort=False)):
                ax.plot(front[cost], front[quality], color="red", drawstyle="steps-post", linewidth=1,
                        linestyle=("-", "--", ":", "-.")[i % 4], label=name("Pareto frontier", None, px))
                ax.scatter(front[cost], front[quality], s=140, facecolors="none", edgecolors="red")
            ax.set(xscale="log", xlabel=cost_label, ylabel=f"{quality.upper()} ({better_text(quality)})",
                   title=f"{quality.upper()} per sampling budget (labels: steps)")
            readable_log_x(ax)
            ax.legend(handles=[*_size_handles(shown, points), *ax.get_legend_handles_labels()[0]], fontsize=7)
    fig.tight_layout()
    return fig


def _size_handles(shown: pd.DataFrame, points: pd.DataFrame) -> list:
    """Legend entries of the `shown` points: a colour per student size (1.0 too: a student of the teacher's width),
    the teacher's star, a marker per student method, init, resolution and budget (named, and hollow below the
    largest resolution, as among all `points`)."""
    from matplotlib.lines import Line2D

    name = namer(points)
    students = shown[shown.method != "teacher"]
    handles = [Line2D([], [], marker="o", linestyle="none", color=size_color(s), label=f"size {s:g}")
               for s in sorted(set(students.size_factor))]
    if (shown.method == "teacher").any():
        handles.append(Line2D([], [], marker="*", linestyle="none", color=size_color(1.0), label="teacher"))
    kinds = students[KIND].drop_duplicates()
    return handles + [Line2D([], [], marker=_marker(k.method, k.init), linestyle="none", color="grey",
                             markerfacecolor="none" if hollow(k.image_size, points) else "grey",
                             label=name(*k)) for k in kinds.itertuples(index=False)]
