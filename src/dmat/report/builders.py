"""The report's section builders, one per section of `dmat.report.sections.SECTIONS`: each fills a Section (figures,
notes, tables, list items) from the Inputs. Adding a section = its builder here, its entry in BUILDERS and its name
and title in `sections`."""

from __future__ import annotations

import pandas as pd

from dmat.report import curves, figures, first_screen, frontier, scaling, sensitivity, speed
from dmat.report.answer import answer
from dmat.report.findings import findings, seeds_statement
from dmat.report.query import Study, load_npz
from dmat.report.sections import (
    MOST_COPIED_NPZ,
    STATES_NPZ,
    TRAJECTORIES_NPZ,
    Inputs,
    Section,
)
from dmat.report.tables import (
    GROUP,
    budget_table,
    format_table,
    interval_table,
    key_columns,
    kind_of,
    memorisation_table,
    namer,
    pareto_mask,
    quality_table,
    with_keys,
)


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
    section.figure("denoising", curves.denoising_figure(panels), "no evaluation logged denoising states")


QUALITY_NOTE = ("Every KID and FID is N generated vs N real images, N as shown, and its floor is N real vs N other "
                "real images; both are the mean ± sd over the evaluation's random draws of those sets (the same "
                "real set B for model and floor in each draw). KID is unbiased at any N; FID is not, so only "
                "same-N numbers are compared. kid_z = (KID - floor) / floor sd: within about ±2 the model is "
                "inside the floor's spread. reference: the plain kid/fid are against the held-out split where the "
                "data set has one (no model trains on it), else the train split; kid_train / kid_heldout side by "
                "side: a held-out score clearly above the train one is a memorisation sign. Raw numbers: "
                "tables/evaluations.csv.")
MEMORISATION_NOTE = ("copy_rate: the copy test that survives noise and 1-pixel shifts. Generated samples and real "
                     "images no model trained on (the held-out split, else the validation split) are compared with "
                     "the training images after a low-pass filter and at the best shift by up to 1 px; a sample's "
                     "ratio is its distance to the nearest training image over that to the second nearest (about 1 "
                     "among many similar images, about 0 for a copy of one), and it is a copy when that ratio is below "
                     "the held-out images' 5% quantile: copy_rate is about 0.05 by chance (copy_rate_chance) and 1.0 "
                     "for a model that returns its training images. copy_alarm = 1 when copy_rate is at least twice "
                     "chance and a one-sided binomial test gives p < 0.01 (copy_p_value): the model copies, whatever "
                     "its FID/KID. nn_ratio: the samples' median ratio beside the held-out images' (nn_ratio_heldout). "
                     "copy_rate_pixel / _feature and nn_distance_*: the raw nearest distances (a noisy or shifted copy "
                     "escapes them). Below: each model's samples with the lowest ratio (top), their nearest training "
                     "image (bottom) and the ratio.")


def memorisation_section(section: Section, study: Study, sizes: list[float]) -> None:
    section.notes.append(MEMORISATION_NOTE)
    section.tables.append(memorisation_table(study.evaluations))
    panels = [(label, d["samples"], d["neighbours"], d["distances"], float(d["threshold"]))
              for label, d in _artifact_panels(section, study, sizes, MOST_COPIED_NPZ)]
    section.figure("most_copied", curves.most_copied_figure(panels), f"no evaluation logged {MOST_COPIED_NPZ}")


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
    return curves.trajectory_pca_figure(teacher, students)


def sweep_section(section: Section, trials: pd.DataFrame) -> None:
    """Each study's evaluated trials with their Pareto front (FID, parameters); kept out of the size tables."""
    if trials.empty:
        section.notes.append("no Optuna sweep in this experiment (make sweep)")
        return
    for name, study in trials.groupby("study_name"):
        counts = study.status.value_counts().to_dict()
        section.notes.append(f"study {name}: {len(study)} trial runs ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
                             f"{int(study.fid.notna().sum())} evaluated; trials stopped early by the pruner and failed ones have no FID")
        section.figure(f"sweep_{name}", figures.sweep_figure(study, name), f"no evaluated trial in study {name}")
        front = study[pareto_mask(study.num_parameters, study.fid)].sort_values("num_parameters")
        section.tables.append(front.reindex(columns=["study_name", "trial", "size_factor", "num_parameters", "kid", "fid",
                                                     "run_id"]))


def _summary(section: Section, i: Inputs) -> None:
    # the answer in one paragraph, every kind and metric (the first screen has the main line in one sentence)
    section.notes.append(answer(i.evals, i.histories))
    section.tables.append(format_table(i.table))
    section.notes += seeds_statement(i.evals, i.study.models)
    section.notes.append("Mean ± half-width of the 95% t-interval over evaluations (n; seeds: distinct training "
                         "seeds); n/a = not logged or not defined. kid, fid and their floors are at matched N (see the "
                         "quality table). Latency per image: " + i.latency + ", as everywhere in this report. "
                         "quality_per_mparam and quality_per_ms are (1/FID) per million parameters "
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
    section.figure("mse_heatmap", curves.mse_heatmap(i.histories, i.evals, sizes), "no eps_mse_teacher history")
    _curve_intervals(section, i, i.evals[i.evals.size_factor.isin(sizes)], "eps_mse_teacher")


def _curve_intervals(section: Section, i: Inputs, runs: pd.DataFrame, key: str) -> None:
    """Per size: each run's mean of a per-timestep series, then mean ± 95% interval over the runs (seeds)."""
    means = curves.per_run_means(i.histories, runs, key)
    if not means.empty:
        section.tables.append(curves.curve_interval_table(means, f"{key} (mean over t) ± 95% CI over seeds"))


def _time(section: Section, i: Inputs) -> None:
    section.figure("time_analysis", curves.time_figure(i.histories, i.evals, i.table, i.subset), "no evaluation")
    section.notes.append("Curves: mean over runs (seeds), band: 95% t-interval where a size has several runs.")
    _curve_intervals(section, i, i.evals[i.evals.size_factor.isin(i.subset)], "eps_mse_true")
    section.notes.append(f"Latency per image: {i.latency}.")
    section.tables.append(interval_table(i.table, ("latency_ms_per_image",)))


def _trajectory(section: Section, i: Inputs) -> None:
    section.figure("trajectory_divergence", curves.trajectory_divergence_figure(i.histories, i.evals, i.subset),
                   "no traj_mse history")
    section.figure("trajectory_pca", trajectory_pca(i.study, i.subset), f"no {TRAJECTORIES_NPZ} artifact")
    section.tables.append(interval_table(i.table, ("final_mse", "traj_mse_mean")))


SCALING_NOTE = ("L(N) = L_inf + a N^-alpha fitted by least squares to every run of each student method, init, "
                "resolution and training budget (the teacher is the reference, not a point, and only for students at "
                "its resolution: another resolution's quality is against other real images), N = parameters or FLOPs "
                f"per forward; intervals: 95% parametric bootstrap ({scaling.BOOTSTRAP} resamples: every run drawn "
                "anew around the fitted law with the residuals' sd, itself drawn from its uncertainty; the teacher's "
                "value drawn with its own sd for the size needed), calibrated in simulation (tests/test_scaling.py). "
                "A size needed outside the sizes measured is labelled an extrapolation, not a finding; one drawn from "
                "models still improving is an upper bound. Band: the bootstrap fits' pointwise 95% range. The validation task loss is the model's at its best epoch (the evaluated checkpoint).")


def _scaling(section: Section, i: Inputs) -> None:
    section.notes.append(SCALING_NOTE)
    section.items = i.scaling.laws + i.scaling.needed
    section.figure("scaling_law", figures.scaling_figure(i.scaling.panels),
                   f"no fit (at least {scaling.MIN_SIZES} distinct sizes of one method, and a converged fit)")


FRONTIER_NOTE = ("Each point is one (method, init, resolution, training budget, size, sampling steps): KID/FID at the "
                 "same matched N as the headline scores (mean over seeds, 95% interval in tables/frontier.csv), "
                 "against the cost of sampling one image: steps x FLOPs per forward, and the latency per image as in "
                 "the summary (at the point's steps). Red: the Pareto frontier (one per resolution), drawn as the best "
                 "quality a budget buys. Steps come from `dmat evaluate --steps-grid` (the pipeline's default); an "
                 "evaluation without a grid gives its own steps only.")


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
    section.figure("training_curves", curves.training_figure(i.histories, i.shown_models),
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
    if i.side_by_side is None:
        section.notes.append("Speed against size: no side-by-side timings yet (`dmat cost`, which the pipeline "
                             "runs); each evaluation's own latency was measured at whatever load the machine had.")
        return
    section.notes.append("Speed against size, from the newest `dmat cost` run: every model timed in one process, "
                         "interleaved, one forward pass each, median of its rounds; the figure's latency: "
                         f"{i.latency}.")
    section.items = speed.speed_sentences(i.side_by_side)


SENSITIVITY_NOTE = ("The headline kid, fid, precision and recall (and the steps grid) are in a random CNN's features "
                    "(randcnn: seeded, never trained, so it holds no data set's images); *_classifier: the same scores "
                    "in the digit classifier's. A classifier is trained to ignore what makes a sample grainy or soft "
                    "(real images plus noise of sigma 0.1 score like the data in it); random 3x3 filters respond to "
                    "edges, sharpness and pixel noise. An older dmat's evaluation (no headline_space param) has its "
                    "kid/fid in the classifier's space: shown only as kid_classifier etc. and listed under problems.")


def _sensitivity(section: Section, i: Inputs) -> None:
    section.notes.append(SENSITIVITY_NOTE)
    sensitivity.add_to(section, [i.experiment_id])


def _findings(section: Section, i: Inputs) -> None:
    section.items = findings(i.table, i.evals, i.study.problems, i.study.models,
                             computed=[line for line in i.scaling.needed if line.startswith(("KID vs parameters",
                                                                                              "FID vs parameters"))]
                             + i.budget[2]["flops_per_image"])  # latency bands: in the frontier section


BUILDERS = {
    "answer": first_screen.answer_section, "caveats": first_screen.caveats_section,
    "summary": _summary, "quality": _quality, "mse": _mse, "trajectory": _trajectory, "problems": _problems,
    "findings": _findings, "scaling": _scaling, "frontier": _frontier, "time": _time, "training": _training,
    "memorisation": lambda section, i: memorisation_section(section, i.study, i.subset),
    "efficiency": _efficiency, "sensitivity": _sensitivity,
    "sweep": lambda section, i: sweep_section(section, i.study.sweep_trials),
    "denoising": lambda section, i: denoising_section(section, i.study, i.subset),
}


def build_sections(inputs: Inputs, sections: tuple[str, ...]) -> list[Section]:
    built = []
    for key in sections:
        section = Section(key)
        BUILDERS[key](section, inputs)
        built.append(section)
    return built
