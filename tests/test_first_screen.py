"""The report's first screen (report/first_screen.py): one sentence on the main line in both feature spaces, never
naming the teacher under another name, an eight-column results table with units, and the figure it is read on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmat.report.first_screen import headline, ratio_figure, results_table
from dmat.report.speed import OWN_LATENCY, one_latency
from dmat.report.tables import summary_table


def _evaluations(kids: dict[tuple[str, str, float], list[float]], teacher: list[float],
                 classifier_factor: dict[float, float] | None = None) -> pd.DataFrame:
    """The teacher's seeds, then each (method, init, size)'s seeds, with both KIDs (the classifier's = KID x factor),
    FID, parameters (size^2 of the teacher's 1 M), FLOPs and latency."""
    factor = classifier_factor or {}
    rows = [dict(method="teacher", init="random", size_factor=1.0, model_seed=s, kid=k) for s, k in enumerate(teacher)]
    rows += [dict(method=m, init=i, size_factor=z, model_seed=s, kid=k) for (m, i, z), values in kids.items()
             for s, k in enumerate(values)]
    frame = pd.DataFrame(rows)
    return frame.assign(kid_sd=0.0, kid_classifier=frame.kid * frame.size_factor.map(factor).fillna(1.0),
                        fid=100 * frame.kid, num_parameters=1e6 * frame.size_factor**2,
                        flops_per_forward=5e7 * frame.size_factor**2, latency_ms_per_image=20 * frame.size_factor,
                        epochs_run=30.0, image_size=16)


MAIN = {("distill", "pruned", 1.0): [1.0, 1.01, 0.99], ("distill", "pruned", 0.5): [1.02, 1.03, 1.01],
        ("distill", "pruned", 0.2): [1.6, 1.7, 1.65]}


def test_the_sentence_names_the_main_lines_size_both_spaces_show_with_its_share_and_intervals():
    text = headline(_evaluations({**MAIN, ("scratch", "pruned", 0.5): [1.3, 1.35, 1.32]}, [1.0, 1.0, 1.0]))
    assert text.startswith("A student with 25% of the teacher's parameters (size 0.5, distill, pruned init) comes "
                           "within 10% of the teacher's KID in both feature spaces: random-CNN KID 1.02x the "
                           "teacher's, 95% interval")
    assert "over 3 seeds per size" in text and "nan" not in text


def test_the_classifier_space_alone_can_refuse_a_size():
    """Size 0.5 drops classes: the random CNN sees nothing, the classifier triples its KID; only size 1 is shown in
    both, and size 1 from the teacher's weights is the teacher under another name: no answer."""
    text = headline(_evaluations(MAIN, [1.0, 1.0, 1.0], classifier_factor={0.5: 3.0}))
    assert text.startswith("No smaller student of the main line (distill, pruned init) came within 10% of the teacher "
                           "in both feature spaces (not shown by the classifier KID); closest by the random-CNN KID")
    assert "size 1 " not in text and "size 1," not in text


def test_a_pruned_size_one_student_is_never_the_answer_but_a_random_start_of_size_one_is_not_the_teacher():
    only_one = {("distill", "pruned", 1.0): [1.0, 1.01, 0.99], ("distill", "pruned", 0.5): [1.5, 1.6, 1.55]}
    assert headline(_evaluations(only_one, [1.0, 1.0, 1.0])).startswith("No smaller student of the main line")
    random_one = {("distill", "random", 1.0): [1.0, 1.01, 0.99], ("distill", "random", 0.5): [1.5, 1.6, 1.55]}
    assert "(size 1, distill)" in headline(_evaluations(random_one, [1.0, 1.0, 1.0]))


def test_the_results_table_has_eight_columns_with_units_and_marks_the_best_student():
    evaluations = _evaluations({**MAIN, ("scratch", "pruned", 0.5): [1.3, 1.35, 1.32]}, [1.0, 1.0, 1.0])
    table = results_table(summary_table(evaluations), evaluations, OWN_LATENCY)
    assert len(table.columns) <= 8 and {"params (M)", "FLOPs / step (M)", "KID ↓ (×10⁻³)", "FID ↓",
                                       f"latency ({OWN_LATENCY})", "epochs run"} <= set(table.columns)
    assert list(table.model)[0] == "teacher" and table["params (M)"].iloc[0] == "1.000"
    best = table[table["KID ↓ (×10⁻³)"].str.endswith("*")]
    assert list(best.model) == ["distill, pruned init, size 1"]  # the lowest student KID, marked once
    half = table.set_index("model").loc["distill, pruned init, size 0.5"]
    assert half["KID / teacher (95% interval)"].startswith("1.02 [") and "±" in half["KID ↓ (×10⁻³)"]


def test_the_latency_is_the_side_by_side_forward_pass_times_the_steps_where_timed():
    """Each model run's own side-by-side forward pass (at the smallest batch) times its evaluation's steps: the seeds'
    timings give the interval; a model the cost run did not time is n/a, not its evaluation's own latency."""
    evaluations = _evaluations(MAIN, [1.0, 1.0, 1.0]).assign(steps=50)
    evaluations = evaluations.assign(run_id=[f"eval{i}" for i in range(len(evaluations))],
                                     model_run_id=[f"model{i}" for i in range(len(evaluations))])
    forward = {0: 2.0, 1: 2.0, 2: 2.0, 3: 2.2, 4: 2.2, 5: 2.2, 6: 1.0, 7: 1.1, 8: 1.2}  # model 9 onwards: not timed
    timed = [dict(run_id=f"model{i}", batch_size=b, ms_per_forward=ms * (1 + (b > 1))) for i, ms in forward.items()
             for b in (1, 256)]
    evaluations, _, label = one_latency(evaluations, pd.DataFrame(columns=["run_id", "key", "step", "value"]), timed)
    assert label == "ms / image, batch 1, 50 steps, timed side by side"
    table = results_table(summary_table(evaluations), evaluations, label).set_index("model")
    column = f"latency ({label})"
    assert table.loc["teacher", column] == "100.0 ± 0.0"  # three evaluations, each its own model run
    assert table.loc["distill, pruned init, size 1", column] == "110.0 ± 0.0"
    assert table.loc["distill, pruned init, size 0.5", column] == "55.0 ± 12.4"  # 50, 55, 60 over its seeds
    assert table.loc["distill, pruned init, size 0.2", column] == "n/a"


def test_the_figure_draws_both_spaces_with_the_threshold():
    fig = ratio_figure(_evaluations(MAIN, [1.0, 1.0, 1.0]))
    assert [ax.get_title() for ax in fig.axes] == ["random-CNN KID / the teacher's", "classifier KID / the teacher's"]
    assert any(np.isclose(line.get_ydata()[0], 1.1) for line in fig.axes[0].get_lines())
    assert ratio_figure(_evaluations({}, [1.0])) is None


def test_ablations_at_fewer_sizes_are_said_to_hold_at_those_sizes_only():
    from dmat.report.study_kind import caveats

    students = pd.DataFrame([dict(role="student", method="distill", init="pruned", size_factor=z, seed=s)
                             for z in (0.2, 0.4, 0.5, 1.0) for s in (0, 1)]
                            + [dict(role="student", method="scratch", init="pruned", size_factor=z, seed=s)
                               for z in (0.2, 1.0) for s in (0, 1)])
    said = caveats("full", students)
    assert said[-1:] == ["scratch, pruned init was trained at sizes 0.2, 1 only (the main line at 4 sizes): its "
                    "comparison with other kinds holds at those sizes."]


def test_the_report_run_carries_the_first_screens_sentence_for_the_pipeline_to_print(store, tmp_path):
    from mlflow.tracking import MlflowClient
    from synthetic_study import log_synthetic_study

    from dmat import tracking
    from dmat.report import build_report

    log_synthetic_study("syn", sizes=(0.5,), methods=("distill",), artifacts=False, problems=False)
    html = build_report("syn", sections=("answer",), out_dir=tmp_path / "out").read_text()
    run = tracking.find_runs(tracking.REPORT, max_results=1)[0]
    said = MlflowClient().get_run(run.info.run_id).data.tags[tracking.ANSWER]
    assert said.startswith("Only the random-CNN features scored these models") and said in html


def _at_classifier_floor(classifier: dict[tuple[str, str, float], float], teacher: float) -> pd.DataFrame:
    """MAIN's random-CNN KIDs; in the classifier's space the teacher at `teacher` and each size at its value, beside a
    floor of 0 with sd 0.01 (the teacher inside it when its KID is at most 0.02)."""
    frame = _evaluations(MAIN, [1.0, 1.0, 1.0])
    keys = zip(frame.method, frame.init, frame.size_factor)
    values = [teacher if m == "teacher" else classifier[(m, i, z)] for m, i, z in keys]
    return frame.assign(kid_classifier=values, kid_classifier_floor=0.0, kid_classifier_floor_sd=0.01)


def test_where_the_teacher_is_inside_the_floor_a_student_matches_it_by_being_inside_it_too():
    """A converged teacher's classifier KID is inside the real-vs-real floor (even below 0: KID is unbiased); a ratio
    to it is noise over noise, so there a student comes within 10% of it by being inside the floor as well."""
    inside = {("distill", "pruned", 1.0): 0.01, ("distill", "pruned", 0.5): 0.015, ("distill", "pruned", 0.2): 0.3}
    text = headline(_at_classifier_floor(inside, teacher=-0.03))
    assert text.startswith("A student with 25% of the teacher's parameters (size 0.5, distill, pruned init) comes "
                           "within 10% of the teacher's KID in both feature spaces: random-CNN KID 1.02x the teacher's")
    assert "classifier KID inside the real-vs-real floor, like the teacher's" in text and "nan" not in text
    outside = {**inside, ("distill", "pruned", 0.5): 0.3}
    text = headline(_at_classifier_floor(outside, teacher=0.005))
    assert text.startswith("No smaller student of the main line (distill, pruned init) came within 10% of the teacher "
                           "in both feature spaces (not shown by the classifier KID) (the teacher's classifier KID is "
                           "inside the real-vs-real floor: there a student matches it by being inside the floor too)")
