"""Matplotlib figures of series and images: per-timestep and per-step curves over the seeds, the epsilon-MSE heatmap,
training curves, sampler trajectories and image panels (denoising, most-copied samples). Their style (colour = size,
line = method) is `dmat.report.figures`'; like those, each returns a Figure or None when there is nothing to plot.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from dmat.config.metrics import TRAINING
from dmat.report.figures import LINESTYLE, STUDENT_METHODS, errorbar_by_method, hollow, size_color, teacher_value
from dmat.config.metrics import format_values, metric_header, metric_of
from dmat.report.tables import GROUP, key_columns, mean_ci, namer, with_keys


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
                 if hollow(key["image_size"], curves) else dict(marker="." if len(curve) < 10 else None))
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
    errorbar_by_method(axes[2], table, "size_factor", "latency_ms_per_image")
    teacher = teacher_value(table, "latency_ms_per_image")
    if np.isfinite(teacher):
        axes[2].scatter([1.0], [teacher], marker="*", s=150, color="black", label="teacher", zorder=3)
    axes[2].set(xlabel="size factor", ylabel="latency (ms / image)", title="latency vs size")
    if axes[2].get_legend_handles_labels()[0]:  # a study without evaluations has no line to name
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


TRAINING_KEYS = TRAINING  # train_task_loss, val_task_loss


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


def mean_curves(histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean of a metric history per GROUP and step over the given runs (its seeds), with the
    half-width `ci95` of its 95% t-interval and `n` runs (one run: NaN, no band)."""
    series = histories[(histories.key == key) & histories.run_id.isin(runs.run_id)]
    merged = series.merge(with_keys(runs)[["run_id", *GROUP]], on="run_id")
    rows = [(*keys, *mean_ci(group.value), len(group)) for keys, group in merged.groupby([*GROUP, "step"])]
    return pd.DataFrame(rows, columns=[*GROUP, "step", "value", "ci95", "n"])


def per_run_means(histories: pd.DataFrame, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per GROUP (method, init, image_size, epochs, size_factor): each run's mean of a metric history over its steps,
    then their mean and 95% interval over the runs (seeds), as columns value, ci95 and n."""
    series = histories[(histories.key == key) & histories.run_id.isin(runs.run_id)]
    per_run = series.groupby("run_id", as_index=False)["value"].mean().merge(with_keys(runs)[["run_id", *GROUP]])
    rows = [(*keys, *mean_ci(group.value), len(group)) for keys, group in per_run.groupby(GROUP)]
    return pd.DataFrame(rows, columns=[*GROUP, "value", "ci95", "n"])


def curve_interval_table(summary: pd.DataFrame, label: str) -> pd.DataFrame:
    """`per_run_means` output as a display table: "mean ± 95% interval over seeds" under `label`; a label that begins
    with a metric's name ("eps_mse_true (mean over t) ...") has its header there instead ("ε MSE to the noise ↓ (mean
    over t) ...") and its values formatted as that metric's."""
    shown = key_columns(summary).join(summary[["n"]])
    metric, _, rest = label.partition(" ")
    if metric_of(metric) is not None:
        label = f"{metric_header(metric)} {rest}".strip()
    shown[label] = format_values(metric, summary.value, summary.ci95)
    return shown
