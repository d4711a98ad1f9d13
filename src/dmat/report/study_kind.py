"""Which study a report is about (the newest pipeline run's preset) and what it cannot conclude, for the report's
first screen. The quick study shows what the study measures in minutes, from models still improving, one seed and
one student init and method: its numbers are no answer to how size changes quality, and the report says so."""

from __future__ import annotations

import pandas as pd

from dmat import tracking

FULL_STUDY_COMMAND = "make study  (or: dmat pipeline --preset full)"


def preset_of(experiment_id: str) -> str | None:
    """The preset of the newest pipeline run in the experiment (None: no pipeline ran, e.g. stages run by hand)."""
    runs = tracking.find_runs(tracking.PIPELINE, status=None, max_results=1, experiment_ids=[experiment_id])
    return runs[0].data.params.get("preset") if runs else None


def caveats(preset: str | None, models: pd.DataFrame) -> list[str]:
    """What this study cannot support, one sentence each, read from its models (report.query's `models`)."""
    out = []
    students = models[models["role"] == tracking.STUDENT] if "role" in models else models.iloc[0:0]
    if "still_improving" in models:
        improving = int((models["still_improving"] > 0).sum())
        if improving:
            out.append(f"{improving} of {len(models)} models were still improving when training stopped: "
                       "differences between sizes may be differences in training, not in size.")
    seeds = students["seed"].nunique() if "seed" in students else 0
    if seeds < 2:
        out.append("Each student was trained with one seed: there is no interval over seeds, and no difference "
                   "between two sizes is tested.")
    for column, what in (("init", "initialisation"), ("method", "training method")):
        if column in students and students[column].nunique() == 1:
            out.append(f"One student {what} ({students[column].iloc[0]}): whether the conclusion holds for another "
                       "is not measured.")
    out += fewer_sizes(students)
    if preset == "quick":
        out.insert(0, "This is the quick study: short training budgets and a small teacher, to show in minutes what "
                      "the study measures. Its numbers are not the answer to how model size changes quality.")
    return out


def fewer_sizes(students: pd.DataFrame) -> list[str]:
    """A sentence per student kind trained at fewer sizes than the kind with the most (an adaptive design's
    ablations): what it says about another kind holds at its sizes only."""
    if not {"method", "init", "size_factor"} <= set(students.columns) or students.empty:
        return []
    sizes = students.fillna({"init": "random"}).groupby(["method", "init"]).size_factor.apply(
        lambda s: tuple(sorted(s.unique())))
    most = max(map(len, sizes))
    return [f"{method}, {init} init was trained at sizes {', '.join(f'{z:g}' for z in found)} only (the main line at "
            f"{most} sizes): its comparison with other kinds holds at those sizes." for (method, init), found in sizes.items()
            if len(found) < most]


def mixed_precisions(models: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """A sentence per precision the study's models were trained, or its evaluations sampled, at more than one of:
    such models are kept apart in every table (report.tables.NAMED), never compared as one line."""
    out = []
    for frame, column, what in ((models, "train_precision", "trained"), (evaluations, "sampling_precision",
                                                                           "sampled")):
        found = sorted(frame[column].dropna().unique()) if column in frame else []
        if len(found) > 1:
            out.append(f"Models were {what} at more than one precision ({' and '.join(found)}): each precision is its "
                       "own row, and a comparison across them is one of precision as much as of size.")
    return out


def banner(preset: str | None, models: pd.DataFrame, evaluations: pd.DataFrame) -> list[str]:
    """The first-screen notes: the study's kind, what it cannot conclude, and the one command for the full study."""
    notes = caveats(preset, models) + mixed_precisions(models, evaluations)
    if notes and preset != "full":
        notes.append(f"The full, converged study (every model until its validation loss stops improving, both "
                     f"initialisations and methods, three seeds): {FULL_STUDY_COMMAND}")
    return notes
