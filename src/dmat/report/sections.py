"""The report's sections: their names, titles and order, what a section holds (figures, notes, tables, list items,
CSVs), and the inputs every section builder reads (the study, its summary table and the metric histories the
figures need, fetched once). The builders are `dmat.report.builders`; the HTML page, `dmat.report.html`."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field, replace
from functools import cached_property

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from dmat.report import curves, frontier, scaling, speed
from dmat.report.query import Study, metric_histories
from dmat.report.tables import readable_subset, summary_table

log = logging.getLogger(__name__)

SECTIONS = ("answer", "caveats", "summary", "quality", "sensitivity", "memorisation", "efficiency", "scaling", "frontier", "sweep", "mse",
            "denoising", "time", "trajectory", "training", "findings", "problems")
OPTIONAL_SECTIONS = ("mse", "denoising", "time", "trajectory")
TITLES = {"answer": "The answer", "caveats": "What this study cannot conclude",
          "summary": "Summary per size and method", "quality": "Quality against size (matched sample sizes)",
          "sensitivity": "Sensitivity: which corruptions of real images each score detects",
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
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (name, PNG)
    notes: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)  # written to tables/<name>.csv

    def figure(self, name: str, fig, missing: str) -> None:
        """The figure as PNG bytes, and closed: a report draws some 25, and open ones would all stay in memory."""
        if fig is None:
            self.notes.append(f"n/a: {missing}")
        else:
            self.figures.append((name, png_of(fig)))


def png_of(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Inputs:
    """What the sections are built from: the study, its summary table, the readable subset of sizes, the runs and
    metric histories the figures show, and the side-by-side timings (None: no cost run) with the label of the one
    latency they give (speed.one_latency)."""

    study: Study
    table: pd.DataFrame
    subset: list[float]
    shown_models: pd.DataFrame
    histories: pd.DataFrame
    full_mse: bool
    experiment_id: str
    side_by_side: list[dict] | None
    latency: str

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


def gather_inputs(study: Study, sections: tuple[str, ...], full_mse: bool) -> Inputs:
    """The sections' inputs: the summary table, the readable subset of sizes and the histories the asked-for
    sections draw (each fetched once); every latency in them, of the evaluations and of their steps grids, made the
    one latency here, so that no two sections show two kinds of it."""
    evals = study.evaluations
    subset = readable_subset(evals[evals.method != "teacher"].size_factor)
    shown_evals = evals[evals.size_factor.isin(subset) | (evals.method == "teacher")]
    finished_models = study.models[study.models.status == "FINISHED"]
    shown_models = finished_models[finished_models.size_factor.isin(subset) | (finished_models.role == "teacher")]
    wanted = {"mse": (evals if full_mse else shown_evals, ["eps_mse_teacher"]),
              "time": (shown_evals, ["eps_mse_true", "eps_mse_teacher"]),
              "trajectory": (shown_evals, ["traj_mse"]),
              "training": (shown_models, list(curves.TRAINING_KEYS)),
              "scaling": (finished_models, ["val_task_loss"]),  # the findings state the fits and frontier too
              # grid_kid of an evaluation in another feature space is not today's headline (query.set_space_apart)
              "frontier": (evals[evals.reindex(columns=["legacy_space"]).legacy_space.isna()],
                           list(frontier.GRID_KEYS))}
    needed = set(sections) | ({"scaling", "frontier"} if "findings" in sections else set())
    needed |= {"scaling"} if "summary" in sections else set()  # the answer compares validation curves
    start = time.perf_counter()
    histories = pd.concat([metric_histories(runs.run_id, keys) for key, (runs, keys) in wanted.items()
                           if key in needed] or [pd.DataFrame(columns=["run_id", "key", "step", "value"])])
    histories = histories.drop_duplicates(["run_id", "key", "step"])  # a run and key two sections both asked for
    log.info("fetched %d history points in %.1f s", len(histories), time.perf_counter() - start)
    experiment_id = mlflow.get_experiment_by_name(study.experiment).experiment_id
    rows = speed.side_by_side_rows(experiment_id)
    evals, histories, latency = speed.one_latency(evals, histories, rows)
    return Inputs(replace(study, evaluations=evals), summary_table(evals), subset, shown_models, histories, full_mse,
                  experiment_id, rows, latency)
