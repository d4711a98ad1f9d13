"""Matplotlib figures of the report (Agg backend, no display needed).

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
from matplotlib.colors import LogNorm  # noqa: E402

from dmat.report.frontier import frontier  # noqa: E402
from dmat.report.tables import GROUP, KIND, mean_curves, namer, pareto_mask, with_keys  # noqa: E402

LINESTYLE = {"distill": "-", "scratch": "--", "teacher": ":"}
MARKER = {"distill": "o", "scratch": "s", "teacher": "*"}
INIT_MARKER = {"pruned": "D"}  # a pruned start: diamonds (random: the method's marker)
STUDENT_METHODS = ("distill", "scratch")


def size_color(size: float):
    return "black" if size >= 1.0 else plt.cm.viridis(0.9 * float(size))


def _marker(method: str, init: str) -> str:
    return INIT_MARKER.get(init, MARKER.get(method, "^"))


def _hollow(image_size: float, frame: pd.DataFrame) -> bool:
    """Whether a model at `image_size` is below the largest resolution of `frame` (drawn with hollow markers)."""
    return image_size < frame.image_size.max()


def _students(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.method != "teacher"]


def _teacher_value(table: pd.DataFrame, column: str) -> float:
    teacher = table[table.method == "teacher"][column].dropna()
    return float(teacher.iloc[0]) if len(teacher) else np.nan


def _errorbar_by_method(ax, table: pd.DataFrame, x: str, y: str) -> None:
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
        teacher = _teacher_value(rows, metric)
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
    if not table.reindex(columns=["kid", "fid"]).notna().any().any():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "kid", "KID"), (axes[1], "fid", "FID")):
        _errorbar_by_method(ax, table, "num_parameters", metric)
        _reference_lines(ax, table, metric, f"{metric}_floor")
        ax.set(xscale="log", xlabel="parameters", ylabel=f"{label} at matched N (lower is better)",
               title=f"{label} vs size")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def most_copied_figure(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]):
    """Per model (label, samples, neighbours [k, C, H, W], distances [k], threshold): its generated samples
    nearest to a training image, each above that training image, with the pixel distance."""
    if not panels:
        return None
    cols = max(len(samples) for _, samples, *_ in panels)
    fig, axes = plt.subplots(2 * len(panels), cols, figsize=(1.2 * cols, 2.5 * len(panels)), squeeze=False)
    for row, (label, samples, neighbours, distances, threshold) in enumerate(panels):
        for col in range(cols):
            top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
            top.axis("off")
            bottom.axis("off")
            if col < len(samples):
                top.imshow(_to_image(samples[col]), cmap="gray", vmin=0, vmax=1)
                bottom.imshow(_to_image(neighbours[col]), cmap="gray", vmin=0, vmax=1)
                copied = distances[col] < threshold
                top.set_title(f"d={distances[col]:.2f}" + (" copy" if copied else ""), fontsize=7,
                              color="red" if copied else "black")
        axes[2 * row, 0].text(-0.1, 0.5, f"{label}\ngenerated", transform=axes[2 * row, 0].transAxes, ha="right",
                              va="center", fontsize=8)
        axes[2 * row + 1, 0].text(-0.1, 0.5, "nearest\ntraining", transform=axes[2 * row + 1, 0].transAxes,
                                  ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def efficiency_figure(table: pd.DataFrame):
    """FID against parameters and against latency; Pareto-optimal sizes (of each resolution) ringed and labelled."""
    if not table.fid.notna().any():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    name = namer(table)
    for ax, cost, label, scale in ((axes[0], "num_parameters", "parameters", "log"),
                                   (axes[1], "latency_ms_per_image", "latency (ms / image)", "linear")):
        _errorbar_by_method(ax, table, cost, "fid")
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
    ax.set(xscale="log", xlabel="parameters", ylabel="FID (lower is better)", title=f"sweep {study_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _student_curves(histories: pd.DataFrame, evaluations: pd.DataFrame, sizes: list[float], key: str):
    runs = evaluations[evaluations.size_factor.isin(sizes) & evaluations.method.isin(STUDENT_METHODS)]
    return mean_curves(histories, runs, key)


def mse_heatmap(histories: pd.DataFrame, evaluations: pd.DataFrame, sizes: list[float]):
    """Size factor x timestep heatmap of the epsilon-prediction MSE against the teacher (log colour)."""
    curves = _student_curves(histories, evaluations, sizes, "eps_mse_teacher")
    if curves.empty:
        return None
    grid = curves.pivot_table(index=GROUP, columns="step", values="value")
    name = namer(curves)
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    positive = values[values > 0]
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.35 * len(grid)))
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    image = ax.imshow(values, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(grid)), [f"{keys[-1]:g} {name(*keys[:-1])}" for keys in grid.index])
    ticks = np.linspace(0, grid.shape[1] - 1, min(10, grid.shape[1])).round().astype(int)
    ax.set_xticks(ticks, [str(grid.columns[i]) for i in ticks])
    ax.set(xlabel="timestep t", ylabel="size factor, method", title="epsilon MSE against the teacher")
    fig.colorbar(image, ax=ax, label="MSE (log scale)")
    fig.tight_layout()
    return fig


def _to_image(state: np.ndarray) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> an imshow-able array in [0, 1]."""
    image = np.clip((state + 1) / 2, 0, 1)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def denoising_figure(panels: list[tuple[str, np.ndarray, np.ndarray]]):
    """Rows of (label, states [n_images, n_shown, C, H, W], timesteps): the first image of each model."""
    if not panels:
        return None
    cols = max(states.shape[1] for _, states, _ in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(1.3 * cols, 1.4 * len(panels)), squeeze=False)
    for row, (label, states, timesteps) in enumerate(panels):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < states.shape[1]:
                ax.imshow(_to_image(states[0, col]), cmap="gray", vmin=0, vmax=1)
                if row == 0 or not np.array_equal(timesteps, panels[0][2]):
                    t = int(timesteps[col])
                    ax.set_title(f"t={t}" if t >= 0 else "x_0", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def _curve_lines(ax, curves: pd.DataFrame) -> None:
    """One line per GROUP (method, init, resolution, budget, size), its mean over runs, with a band of its 95% interval
    over the seeds where there are several runs."""
    name = namer(curves)
    for keys, curve in curves.groupby(GROUP):
        key = dict(zip(GROUP, keys))
        color = size_color(key["size_factor"])
        marks = (dict(marker="o", markerfacecolor="none", markevery=max(1, len(curve) // 8))
                 if _hollow(key["image_size"], curves) else dict(marker="." if len(curve) < 10 else None))
        ax.plot(curve.step, curve.value, color=color, linestyle=LINESTYLE.get(key["method"], "-."),
                label=f"{key['size_factor']:g} {name(*keys[:-1])}", **marks)
        band = curve[np.isfinite(curve.ci95.astype(float))]
        if len(band):
            ax.fill_between(band.step, band.value - band.ci95, band.value + band.ci95, color=color, alpha=0.15,
                            linewidth=0)


def time_figure(histories: pd.DataFrame, evaluations: pd.DataFrame, table: pd.DataFrame, sizes: list[float]):
    """Per-timestep error curves per size (vs data noise and vs teacher) and latency against size."""
    runs = evaluations[evaluations.size_factor.isin(sizes)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "eps_mse_true", "epsilon MSE vs the true noise"),
                           (axes[1], "eps_mse_teacher", "epsilon MSE vs the teacher")):
        curves = mean_curves(histories, runs, key)
        curves = curves[curves.value > 0]  # the teacher against itself is exactly 0: nothing to show on log y
        if curves.empty:
            ax.text(0.5, 0.5, "n/a: no history logged", ha="center", transform=ax.transAxes)
        else:
            _curve_lines(ax, curves)
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncol=2)
        ax.set(xlabel="timestep t", ylabel="MSE", title=title)
    _errorbar_by_method(axes[2], table, "size_factor", "latency_ms_per_image")
    teacher = _teacher_value(table, "latency_ms_per_image")
    if np.isfinite(teacher):
        axes[2].scatter([1.0], [teacher], marker="*", s=150, color="black", label="teacher", zorder=3)
    axes[2].set(xlabel="size factor", ylabel="latency (ms / image)", title="latency vs size")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def trajectory_divergence_figure(histories: pd.DataFrame, evaluations: pd.DataFrame, sizes: list[float]):
    """MSE between student and teacher sampler states against sampling step, per size."""
    curves = _student_curves(histories, evaluations, sizes, "traj_mse")
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    _curve_lines(ax, curves)
    ax.set(xlabel="sampling step (0 = x_T)", ylabel="MSE to the teacher's state",
           title="trajectory divergence from the teacher (same noise)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def trajectory_pca_figure(teacher: np.ndarray, students: list[tuple[str, float, str, np.ndarray]]):
    """2-D PCA of sampler paths from shared noise: teacher [steps+1, ...] and students (label, size, method, path)."""
    from sklearn.decomposition import PCA

    if teacher is None or not students:
        return None
    flat = [teacher.reshape(len(teacher), -1)] + [p.reshape(len(p), -1) for *_, p in students]
    pca = PCA(n_components=2).fit(np.concatenate(flat))
    fig, ax = plt.subplots(figsize=(7, 5))
    paths = [("teacher", 1.0, "teacher", flat[0])] + [(*s[:3], f) for s, f in zip(students, flat[1:])]
    for label, size, method, path in paths:
        xy = pca.transform(path)
        ax.plot(xy[:, 0], xy[:, 1], color=size_color(size), marker=".", markersize=3, label=label,
                linestyle="-" if method == "teacher" else LINESTYLE.get(method, "-."),
                linewidth=2.5 if method == "teacher" else 1.2)
        ax.scatter(*xy[-1], color=size_color(size), marker="X", s=60)
    ax.scatter(*pca.transform(flat[0][:1])[0], color="red", marker="o", s=60, label="x_T (shared)", zorder=4)
    ratio = pca.explained_variance_ratio_
    ax.set(xlabel=f"PC1 ({ratio[0]:.0%})", ylabel=f"PC2 ({ratio[1]:.0%})", title="sampler trajectories, 2-D PCA (X = x_0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


TRAINING_KEYS = ("train_task_loss", "val_task_loss")


def training_figure(histories: pd.DataFrame, models: pd.DataFrame):
    """Per-epoch task loss (epsilon MSE to the true noise) of the teacher and the students, per size.

    The task loss, not each run's total loss, because a distilled student's total adds its KD terms
    and would not be comparable with the teacher's or a scratch student's.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    drawn = False
    for ax, key in zip(axes, TRAINING_KEYS):
        curves = mean_curves(histories, models, key)
        drawn |= not curves.empty
        _curve_lines(ax, curves)
        ax.set(xlabel="epoch", ylabel=key, yscale="log", title=key.replace("_", " ") + " (eps MSE to the true noise)")
        if not curves.empty:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if not drawn:
        plt.close(fig)
        return None
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
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def frontier_figure(points: pd.DataFrame, fronts: dict[tuple[str, str], pd.DataFrame], costs: dict[str, str]):
    """Quality (rows: KID, FID) against sampling cost per image (columns), every (size, steps) point coloured by
    size with its step count beside it, the teacher's as stars; each resolution's Pareto frontier in red."""
    qualities = [q for q in ("kid", "fid") if points[q].notna().any()]
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
                        markerfacecolor="none" if _hollow(row.image_size, points) else color, linestyle="none")
                ax.annotate(f"{row.steps:g}", (row[cost], row[quality]), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
            for i, (px, front) in enumerate(fronts[(quality, cost)].groupby("image_size", sort=False)):
                ax.plot(front[cost], front[quality], color="red", drawstyle="steps-post", linewidth=1,
                        linestyle=("-", "--", ":", "-.")[i % 4], label=name("Pareto frontier", None, px))
                ax.scatter(front[cost], front[quality], s=140, facecolors="none", edgecolors="red")
            ax.set(xscale="log", xlabel=cost_label, ylabel=f"{quality.upper()} (lower is better)",
                   title=f"{quality.upper()} per sampling budget (labels: steps)")
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
                             markerfacecolor="none" if _hollow(k.image_size, points) else "grey",
                             label=name(*k)) for k in kinds.itertuples(index=False)]
