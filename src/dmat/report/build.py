"""Build the cross-size report: query MLflow, make tables and figures, write HTML + CSV, log a report run.

Everything is read from finished runs; nothing is re-computed or re-sampled. The HTML embeds its
PNG figures (base64), so the one file opens anywhere, including the MLflow UI's artifact viewer;
the PNGs and CSVs are written beside it too.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from dmat import tracking
from dmat.errors import DmatError
from dmat.report import figures, frontier, scaling, speed
from dmat.report.findings import findings, seeds_statement
from dmat.report.query import Study, load_npz, load_study, metric_histories
from dmat.report.tables import (
    GROUP,
    budget_table,
    curve_interval_table,
    format_table,
    interval_table,
    key_columns,
    kind_of,
    memorisation_table,
    namer,
    pareto_mask,
    per_run_means,
    quality_table,
    readable_subset,
    summary_table,
    with_keys,
)

log = logging.getLogger(__name__)

SECTIONS = ("summary", "quality", "memorisation", "efficiency", "scaling", "frontier", "sweep", "mse", "denoising",
            "time", "trajectory", "training", "findings", "problems")
OPTIONAL_SECTIONS = ("mse", "denoising", "time", "trajectory")
TITLES = {"summary": "Summary per size and method", "quality": "Quality against size (matched sample sizes)",
          "memorisation": "Memorisation: generated samples and their nearest training images",
          "efficiency": "Efficiency", "scaling": "Scaling law: quality against size",
          "frontier": "Quality per inference budget (size x sampling steps)", "sweep": "Optuna sweeps: FID against parameters",
          "mse": "Epsilon MSE against the teacher (size x timestep)", "denoising": "Denoising process",
          "time": "Time analysis", "trajectory": "Trajectory analysis", "training": "Training curves",
          "findings": "Findings", "problems": "Failed, unfinished and incomplete runs"}
STATES_NPZ = "denoising/states.npz"
TRAJECTORIES_NPZ = "trajectories/trajectories.npz"
MOST_COPIED_NPZ = "memorisation/most_copied.npz"


def choose_sections(mse=False, denoising=False, time=False, trajectory=False, all_sections=False) -> tuple[str, ...]:
    """The prototype's flags: none (or --all) gives every section; otherwise the core plus those asked for."""
    asked = {"mse": mse, "denoising": denoising, "time": time, "trajectory": trajectory}
    if all_sections or not any(asked.values()):
        return SECTIONS
    return tuple(s for s in SECTIONS if s not in OPTIONAL_SECTIONS or asked[s])


@dataclass
class Section:
    key: str
    figures: list[tuple[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)  # written to tables/<name>.csv

    def figure(self, name: str, fig, missing: str) -> None:
        if fig is None:
            self.notes.append(f"n/a: {missing}")
        else:
            self.figures.append((name, fig))


def _latest_per_group(evaluations: pd.DataFrame, sizes: list[float]) -> pd.DataFrame:
    """The teacher's and, per model (GROUP) of a size in `sizes`, the newest evaluation (inputs are newest first)."""
    chosen = with_keys(evaluations[(evaluations.method == "teacher") | evaluations.size_factor.isin(sizes)])
    return chosen.drop_duplicates(GROUP, keep="first").sort_values(
        ["image_size", "size_factor", "method", "init", "epochs"], ascending=[False, False, True, True, True])


def _label(row, name) -> str:
    """A row's model in a panel; `name`: namer() of the study's evaluations."""
    return ("teacher" if row.method == "teacher"
            else f"{row.size_factor:g} {name(*kind_of(row))}")


def _artifact_panels(section: Section, study: Study, sizes: list[float], path: str) -> list[tuple[str, dict]]:
    """(label, arrays of `path`) of the newest evaluation per group; a note names the groups without it."""
    panels, missing, name = [], [], namer(study.evaluations)
    for row in _latest_per_group(study.evaluations, sizes).itertuples():
        data = load_npz(row.run_id, path)
        if data is None:
            missing.append(_label(row, name))
        else:
            panels.append((_label(row, name), data))
    if missing:
        section.notes.append(f"no {path} in the evaluations of: {', '.join(missing)}")
    return panels


def denoising_section(section: Section, study: Study, sizes: list[float]) -> None:
    panels = [(label, data["states"], data["timesteps"]) for label, data in _artifact_panels(section, study, sizes,
                                                                                              STATES_NPZ)]
    section.figure("denoising", figures.denoising_figure(panels), "no evaluation logged denoising states")


QUALITY_NOTE = ("Every KID and FID is N generated vs N real images, N as shown, and its floor is N real vs N other "
                "real images; both are the mean ± sd over the evaluation's random draws of those sets (the same "
                "real set B for model and floor in each draw). KID is unbiased at any N; FID is not, so only "
                "same-N numbers are compared. kid_z = (KID - floor) / floor sd: within about ±2 the model is "
                "inside the floor's spread. reference: the plain kid/fid are against the held-out split where the "
                "data set has one (no model trains on it), else the train split; kid_train / kid_heldout side by "
                "side: a held-out score clearly above the train one is a memorisation sign. Raw numbers: "
                "tables/evaluations.csv.")
MEMORISATION_NOTE = ("For each generated sample, the L2 distance to its nearest training image (pixels and the "
                     "extractor's features), against the same distance for real images no model trained on (the "
                     "held-out split, else the validation split). copy rate = share of the generated samples closer "
                     "to a training image than the 1st percentile of the held-out images' distances: about 0.01 by "
                     "chance, 1.0 for a model that returns its training images. Below: each model's samples nearest "
                     "to a training image (top), that training image (bottom) and their pixel distance.")


def memorisation_section(section: Section, study: Study, sizes: list[float]) -> None:
    section.notes.append(MEMORISATION_NOTE)
    section.tables.append(memorisation_table(study.evaluations))
    panels = [(label, d["samples"], d["neighbours"], d["distances"], float(d["threshold"]))
              for label, d in _artifact_panels(section, study, sizes, MOST_COPIED_NPZ)]
    section.figure("most_copied", figures.most_copied_figure(panels), f"no evaluation logged {MOST_COPIED_NPZ}")


def trajectory_pca(study: Study, sizes: list[float]):
    """Teacher path and student paths of the first noise, from evaluations with the most common seed
    (the same seed means the same starting noise for teacher and every student)."""
    students_evals = study.evaluations[study.evaluations.method != "teacher"]
    if students_evals.empty:
        return None
    seeds = students_evals.seed.dropna()
    common = students_evals[students_evals.seed == seeds.mode().iloc[0]] if len(seeds) else students_evals
    teacher, students, name = None, [], namer(study.evaluations)
    for row in _latest_per_group(common, sizes).itertuples():
        data = load_npz(row.run_id, TRAJECTORIES_NPZ)
        if data is None:
            continue
        if teacher is None:
            teacher = data["teacher"][0]
        if data["model"][0].shape == teacher.shape:
            students.append((_label(row, name), row.size_factor, row.method, data["model"][0]))
    return figures.trajectory_pca_figure(teacher, students)


def sweep_section(section: Section, trials: pd.DataFrame) -> None:
    """Each study's evaluated trials with their Pareto front (FID, parameters); kept out of the size tables."""
    if trials.empty:
        section.notes.append("no Optuna sweep in this experiment (make sweep)")
        return
    for name, study in trials.groupby("study_name"):
        counts = study.status.value_counts().to_dict()
        section.notes.append(f"study {name}: {len(study)} trial runs ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
                             f"{int(study.fid.notna().sum())} evaluated; pruned and failed trials have no FID")
        section.figure(f"sweep_{name}", figures.sweep_figure(study, name), f"no evaluated trial in study {name}")
        front = study[pareto_mask(study.num_parameters, study.fid)].sort_values("num_parameters")
        section.tables.append(front.reindex(columns=["study_name", "trial", "size_factor", "num_parameters", "kid", "fid",
                                                     "run_id"]))


@dataclass
class Inputs:
    """What the sections are built from: the study, its summary table, the readable subset of sizes and
    the runs and metric histories the figures show."""

    study: Study
    table: pd.DataFrame
    subset: list[float]
    shown_models: pd.DataFrame
    histories: pd.DataFrame
    full_mse: bool

    @property
    def evals(self) -> pd.DataFrame:
        return self.study.evaluations

    @cached_property
    def scaling(self) -> scaling.Scaling:
        """The scaling-law fits (bootstrapped: computed once for the scaling section and the findings)."""
        return scaling.scaling_study(scaling.scaling_points(self.evals, self.study.models, self.histories))

    @cached_property
    def budget(self):
        """The (size, steps) points, their frontiers and the budget-band sentences."""
        return frontier.budget_study(self.evals, self.histories)


def _inputs(study: Study, sections: tuple[str, ...], full_mse: bool) -> Inputs:
    evals = study.evaluations
    subset = readable_subset(evals[evals.method != "teacher"].size_factor)
    shown_evals = evals[evals.size_factor.isin(subset) | (evals.method == "teacher")]
    finished_models = study.models[study.models.status == "FINISHED"]
    shown_models = finished_models[finished_models.size_factor.isin(subset) | (finished_models.role == "teacher")]
    wanted = {"mse": (evals if full_mse else shown_evals, ["eps_mse_teacher"]),
              "time": (shown_evals, ["eps_mse_true", "eps_mse_teacher"]),
              "trajectory": (shown_evals, ["traj_mse"]),
              "training": (shown_models, list(figures.TRAINING_KEYS)),
              "scaling": (finished_models, ["val_task_loss"]),  # the findings state the fits and frontier too
              "frontier": (evals, list(frontier.GRID_KEYS))}
    needed = set(sections) | ({"scaling", "frontier"} if "findings" in sections else set())
    start = time.perf_counter()
    histories = pd.concat([metric_histories(runs.run_id, keys) for key, (runs, keys) in wanted.items()
                           if key in needed] or [pd.DataFrame(columns=["run_id", "key", "step", "value"])])
    histories = histories.drop_duplicates(["run_id", "key", "step"])  # a run and key two sections both asked for
    log.info("fetched %d history points in %.1f s", len(histories), time.perf_counter() - start)
    return Inputs(study, summary_table(evals), subset, shown_models, histories, full_mse)


def _summary(section: Section, i: Inputs) -> None:
    section.tables.append(format_table(i.table))
    section.notes += seeds_statement(i.evals, i.study.models)
    section.notes.append("Mean ± half-width of the 95% t-interval over evaluations (n; seeds: distinct training "
                         "seeds); n/a = not logged or not defined. kid, fid and their floors are at matched N (see the "
                         "quality table). quality_per_mparam and quality_per_ms are (1/FID) per million parameters "
                         "and per millisecond of latency. Training budget: epochs (the configured maximum; students of "
                         "different epochs are different rows, and the column is shown only where they differ), "
                         "epochs_run, best_epoch (the evaluated checkpoint), optimizer_steps, train_flops ~ 3 x "
                         "flops_per_forward x train images x epochs; still_improving: how many runs were still "
                         "improving when they stopped. Raw numbers: tables/summary.csv.")


def _quality(section: Section, i: Inputs) -> None:
    section.figure("quality_vs_size", figures.quality_figure(i.table), "no evaluation has KID or FID")
    section.notes.append(QUALITY_NOTE)
    section.tables.append(quality_table(i.evals))


def _mse(section: Section, i: Inputs) -> None:
    students = i.evals[i.evals.method != "teacher"]
    sizes = sorted(set(students.size_factor.dropna())) if i.full_mse else i.subset
    section.notes.append(f"sizes shown: {', '.join(f'{s:g}' for s in sizes) or 'none'}"
                         + ("" if i.full_mse else " (a readable subset; --full-mse shows every size)"))
    section.figure("mse_heatmap", figures.mse_heatmap(i.histories, i.evals, sizes), "no eps_mse_teacher history")
    _curve_intervals(section, i, i.evals[i.evals.size_factor.isin(sizes)], "eps_mse_teacher")


def _curve_intervals(section: Section, i: Inputs, runs: pd.DataFrame, key: str) -> None:
    """Per size: each run's mean of a per-timestep series, then mean ± 95% interval over the runs (seeds)."""
    means = per_run_means(i.histories, runs, key)
    if not means.empty:
        section.tables.append(curve_interval_table(means, f"{key} (mean over t) ± 95% CI over seeds"))


def _time(section: Section, i: Inputs) -> None:
    section.figures.append(("time_analysis", figures.time_figure(i.histories, i.evals, i.table, i.subset)))
    section.notes.append("Curves: mean over runs (seeds), band: 95% t-interval where a size has several runs.")
    _curve_intervals(section, i, i.evals[i.evals.size_factor.isin(i.subset)], "eps_mse_true")
    section.tables.append(interval_table(i.table, ("latency_ms_per_image",)))


def _trajectory(section: Section, i: Inputs) -> None:
    section.figure("trajectory_divergence", figures.trajectory_divergence_figure(i.histories, i.evals, i.subset),
                   "no traj_mse history")
    section.figure("trajectory_pca", trajectory_pca(i.study, i.subset), f"no {TRAJECTORIES_NPZ} artifact")
    section.tables.append(interval_table(i.table, ("final_mse", "traj_mse_mean")))


SCALING_NOTE = ("L(N) = L_inf + a N^-alpha fitted by least squares to every run of each student method, init, "
                "resolution and training budget (the teacher is the reference, not a point, and only for students at "
                "its resolution: another resolution's quality is against other real images), N = parameters or FLOPs "
                f"per forward; intervals: 95% percentile bootstrap ({scaling.BOOTSTRAP} resamples) of runs within "
                "each size where sizes have several seeds, else of the sizes. Band: the bootstrap fits' pointwise 95% "
                "range. The validation task loss is the model's at its best epoch (the evaluated checkpoint).")


def _scaling(section: Section, i: Inputs) -> None:
    section.notes.append(SCALING_NOTE)
    section.items = i.scaling.laws + i.scaling.needed
    section.figure("scaling_law", figures.scaling_figure(i.scaling.panels),
                   f"no fit (at least {scaling.MIN_SIZES} distinct sizes of one method, and a converged fit)")


FRONTIER_NOTE = ("Each point is one (method, init, resolution, training budget, size, sampling steps): KID/FID at the "
                 "same matched N as the headline scores (mean over seeds, 95% interval in tables/frontier.csv), "
                 "against the cost of sampling one image: steps x FLOPs per forward, and the measured batch-1 latency "
                 "of the evaluation. Red: the Pareto frontier (one per resolution), drawn as the best quality a budget "
                 "buys. Steps come from `dmat evaluate --steps-grid` (the pipeline's default); an evaluation without a "
                 "grid gives its own steps only.")


def _frontier(section: Section, i: Inputs) -> None:
    points, fronts, sentences = i.budget
    section.notes.append(FRONTIER_NOTE)
    section.items = [line for lines in sentences.values() for line in lines]
    section.csvs["frontier"] = points
    section.figure("budget_frontier", figures.frontier_figure(points, fronts, frontier.COSTS) if len(points) else None,
                   "no evaluation has KID or FID with a sampling cost")
    if len(points):
        front = fronts[("kid", "flops_per_image")]
        section.tables.append(key_columns(front).join(front.reindex(
            columns=["steps", "n", "kid", "kid_ci95", "fid", "flops_per_image", "latency_ms_per_image"])))


def _training(section: Section, i: Inputs) -> None:
    section.figure("training_curves", figures.training_figure(i.histories, i.shown_models),
                   "no finished model run logged train_task_loss / val_task_loss")
    section.notes.append("Curves: mean over runs (seeds), band: 95% t-interval. Below, each model's training budget: "
                         "epochs run, best epoch (the checkpoint evaluated), optimizer steps where logged, training "
                         "FLOPs ~ 3 x flops_per_forward x train images x epochs, and whether it was still improving "
                         "when it stopped (unknown where the run did not log it).")
    section.tables.append(budget_table(i.study.models))


def _problems(section: Section, i: Inputs) -> None:
    if i.study.problems.empty:
        section.notes.append("none: every model run finished and has a complete evaluation")
    else:
        section.tables.append(i.study.problems)


def _efficiency(section: Section, i: Inputs) -> None:
    """Quality against cost, and what the side-by-side timings (`dmat cost`) say of speed against size."""
    section.figure("efficiency", figures.efficiency_figure(i.table), "no evaluation has FID")
    rows = speed.side_by_side_rows(mlflow.get_experiment_by_name(i.study.experiment).experiment_id)
    if rows is None:
        section.notes.append("Speed against size: no side-by-side timings yet (`dmat cost`, which the pipeline "
                             "runs); each evaluation's own latency was measured at whatever load the machine had.")
        return
    section.notes.append("Speed against size, from the newest `dmat cost` run: every model timed in one process, "
                         "interleaved, one forward pass (one sampling step) each, median of its rounds.")
    section.items = speed.speed_sentences(rows)


def _findings(section: Section, i: Inputs) -> None:
    section.items = findings(i.table, i.evals, i.study.problems, i.study.models,
                             computed=[line for line in i.scaling.needed if line.startswith(("KID vs parameters",
                                                                                              "FID vs parameters"))]
                             + i.budget[2]["flops_per_image"])  # latency bands: in the frontier section


BUILDERS = {
    "summary": _summary, "quality": _quality, "mse": _mse, "trajectory": _trajectory, "problems": _problems,
    "findings": _findings, "scaling": _scaling, "frontier": _frontier, "time": _time, "training": _training,
    "memorisation": lambda section, i: memorisation_section(section, i.study, i.subset),
    "efficiency": _efficiency,
    "sweep": lambda section, i: sweep_section(section, i.study.sweep_trials),
    "denoising": lambda section, i: denoising_section(section, i.study, i.subset),
}


def build_sections(study: Study, sections: tuple[str, ...], full_mse: bool) -> list[Section]:
    inputs = _inputs(study, sections, full_mse)
    built = []
    for key in sections:
        section = Section(key)
        BUILDERS[key](section, inputs)
        built.append(section)
    return built


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_html(path: Path, study: Study, sections: list[Section]) -> None:
    """Self-contained HTML; each figure is also written to figures/<name>.png."""
    (path.parent / "figures").mkdir(parents=True, exist_ok=True)
    body = []
    for section in sections:
        body.append(f'<h2 id="{section.key}">{html.escape(TITLES[section.key])}</h2>')
        body += [f"<p class=note>{html.escape(note)}</p>" for note in section.notes]
        if section.items:
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in section.items) + "</ul>")
        body += [t.to_html(index=False, na_rep="n/a", border=0, classes="table") for t in section.tables]
        for name, fig in section.figures:
            png = _png(fig)
            (path.parent / "figures" / f"{name}.png").write_bytes(png)
            body.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    toc = " · ".join(f'<a href="#{s.key}">{html.escape(TITLES[s.key])}</a>' for s in sections)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dmat report: {html.escape(study.experiment)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}
.note{{color:#555}}</style></head><body>
<h1>How model size changes a diffusion model: {html.escape(study.experiment)}</h1>
<p class=note>tracking store {html.escape(tracking.tracking_uri())}; generated {datetime.now():%Y-%m-%d %H:%M:%S};
{len(study.models)} model runs, {len(study.evaluations)} evaluations, {len(study.problems)} problems</p>
<p>{toc}</p>
{chr(10).join(body)}
</body></html>
""", encoding="utf-8")


def write_csvs(folder: Path, study: Study) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary_table(study.evaluations).to_csv(folder / "summary.csv", index=False)
    quality_table(study.evaluations).to_csv(folder / "quality.csv", index=False)
    study.evaluations.to_csv(folder / "evaluations.csv", index=False)
    study.models.to_csv(folder / "models.csv", index=False)
    study.problems.to_csv(folder / "problems.csv", index=False)
    budget_table(study.models).to_csv(folder / "budget.csv", index=False)


def build_report(experiment: str | None = None, sections: tuple[str, ...] = SECTIONS, full_mse: bool = False,
                 out_dir: str | Path | None = None, log_run: bool = True) -> Path:
    """Write reports/<timestamp>/report.html (+ figures/, tables/) and log it as a dmat.role=report run.

    Returns the path of report.html. Raises DmatError before any run exists when the store cannot be
    read or the experiment has no runs.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise DmatError(f"unknown report sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    tracking.check_tracking_reachable()
    start = time.perf_counter()
    study = load_study(experiment)
    log.info("queried %d model runs and %d evaluations in %.1f s", len(study.models), len(study.evaluations),
             time.perf_counter() - start)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("reports") / stamp
    out.mkdir(parents=True, exist_ok=True)
    built = build_sections(study, tuple(s for s in SECTIONS if s in sections), full_mse)
    write_csvs(out / "tables", study)
    for name, frame in ((n, f) for section in built for n, f in section.csvs.items()):
        frame.to_csv(out / "tables" / f"{name}.csv", index=False)
    report = out / "report.html"
    write_html(report, study, built)
    log.info("wrote %s in %.1f s", report, time.perf_counter() - start)
    if log_run:
        with tracking.tracked_run(f"report-{stamp}", {tracking.ROLE: tracking.REPORT}, experiment=study.experiment):
            tracking.log_params({"experiment": study.experiment, "sections": ",".join(s.key for s in built),
                                 "full_mse": full_mse})
            mlflow.log_metrics({"model_runs": len(study.models), "evaluations": len(study.evaluations),
                                "problems": len(study.problems)})
            mlflow.log_artifacts(str(out), artifact_path="report")
    return report
