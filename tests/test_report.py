"""The cross-size report: built from real MLflow runs (synthetic values logged through the client, and
one slow study trained and evaluated with the real pipeline), compared with what MLflow holds."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import nbformat
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_train
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from scipy import stats
from synthetic_study import _evaluation_run, _model_run, log_synthetic_study

from dmat.cli.main import cli
from dmat.config.metrics import format_value
from dmat.errors import DmatError
from dmat.evaluation.evaluate import evaluate_run
from dmat.evaluation.features import train_feature_extractor
from dmat.report import SECTIONS, build_report, choose_sections
from dmat.report.tables import mean_ci, pareto_mask, readable_subset
from dmat.stages.distill import train_student

ROOT = Path(__file__).resolve().parents[1]


def _report_runs(experiment: str):
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`dmat.role` = 'report'")


def _sections_in(html: str) -> list[str]:
    return re.findall(r'<h2 id="(\w+)">', html)


def assert_table_matches_mlflow(summary: pd.DataFrame, evaluation_ids: list[str]) -> None:
    """Every summary row's n, mean and interval equal what the finished evaluations hold in MLflow."""
    client = MlflowClient()
    rows = []
    for run_id in evaluation_ids:
        run = client.get_run(run_id)
        rows.append({"method": run.data.tags["dmat.method"], "size_factor": float(run.data.tags["dmat.size_factor"]),
                     **run.data.metrics})
    logged = pd.DataFrame(rows)
    assert len(summary) == logged.groupby(["method", "size_factor"]).ngroups
    for (method, size), group in logged.groupby(["method", "size_factor"]):
        row = summary[(summary.method == method) & np.isclose(summary.size_factor, size)].iloc[0]
        assert row.n == len(group)
        for metric in ("fid", "kid", "num_parameters", "latency_ms_per_image"):
            values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
            if values.empty:
                assert np.isnan(row[metric])
                continue
            assert row[metric] == pytest.approx(values.mean())
            if len(values) > 1:
                half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
                assert row[f"{metric}_ci95"] == pytest.approx(half)
            else:
                assert np.isnan(row[f"{metric}_ci95"])


def test_mean_ci_and_pareto():
    assert np.isnan(mean_ci([])[0]) and np.isnan(mean_ci([3.0])[1]) and mean_ci([3.0])[0] == 3.0
    mean, half = mean_ci([1.0, 2.0, 3.0, np.nan])
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
    # (1, 5) and (2, 3) and (4, 1) trade off; (3, 4) is dominated by (2, 3); NaN is never optimal
    assert pareto_mask([1, 2, 3, 4, np.nan], [5, 3, 4, 1, 0]).tolist() == [True, True, False, True, False]
    assert readable_subset([0.1 * i for i in range(1, 11)], k=4) == pytest.approx([0.1, 0.4, 0.7, 1.0])


def test_choose_sections():
    assert choose_sections() == SECTIONS == choose_sections(mse=True, all_sections=True)
    chosen = choose_sections(mse=True, trajectory=True)
    assert "mse" in chosen and "trajectory" in chosen and "denoising" not in chosen and "time" not in chosen
    assert "summary" in chosen and "problems" in chosen


def test_report_from_synthetic_study(store, tmp_path, monkeypatch):
    ids = log_synthetic_study("syn", sizes=(0.2, 0.5), seeds=(0, 1))
    client = mlflow.MlflowClient()  # a stage that died before dmat ran (no dmat tags at all)
    crashed = client.create_run(client.get_experiment_by_name("syn").experiment_id).info.run_id
    client.set_terminated(crashed, "FAILED")
    own = client.create_run(client.get_experiment_by_name("syn").experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", own)  # the report stage's run, as `mlflow run -e report` makes it: no problem
    path = build_report("syn", out_dir=tmp_path / "out")
    html = path.read_text()
    assert _sections_in(html) == list(SECTIONS)
    figures = {p.stem for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert figures == {"answer_ratio_vs_size", "quality_vs_size", "most_copied", "efficiency", "mse_heatmap", "denoising", "time_analysis",
                       "trajectory_divergence", "trajectory_pca", "training_curves", "budget_frontier"}
    assert "no fit: 2 distinct sizes" in html  # two sizes: the scaling section refuses to fit
    assert html.count("data:image/png;base64,") == len(figures)  # self-contained

    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert_table_matches_mlflow(summary, ids["evaluations"] + [ids["no_fid"]])
    # the evaluation without FID is n/a in the table, not 0; the failed size is not in it at all
    scratch07 = summary[(summary.method == "scratch") & np.isclose(summary.size_factor, 0.7)].iloc[0]
    assert np.isnan(scratch07.fid) and scratch07.kid > 0
    assert not np.isclose(summary.size_factor, 0.3).any()
    assert "n/a" in html

    problems = pd.read_csv(tmp_path / "out" / "tables" / "problems.csv").set_index("run_id").problem
    assert problems[ids["failed"]] == "failed"
    assert problems[ids["unevaluated"]] == "not evaluated"
    assert problems[ids["no_fid"]] == "incomplete evaluation: no fid"
    assert problems[crashed] == "failed before dmat started (no dmat.role tag)"
    assert own not in problems.index
    assert ids["failed"] in html and ids["unevaluated"] in html

    # findings are computed: the formula gives distill a lower FID than scratch at every size
    assert "size 0.5: distilled FID" in html and "distillation better" in html
    assert "no size is within 10% of the teacher" in html

    report_run = _report_runs("syn")
    assert len(report_run) == 1 and report_run.status.iloc[0] == "FINISHED"
    logged = {a.path for a in MlflowClient().list_artifacts(report_run.run_id.iloc[0], "report")}
    assert {"report/report.html", "report/figures", "report/tables"} <= logged


def test_quality_table_has_matched_n_scores_beside_the_floor_and_memorisation(store, tmp_path):
    ids = log_synthetic_study("syn", sizes=(0.5,), methods=("distill",), problems=False)
    client = MlflowClient()  # a model that copies its training images, evaluated against a held-out split too
    experiment = client.get_experiment_by_name("syn").experiment_id
    copier = _model_run(client, experiment, "student", "scratch", 0.5, 0)
    _evaluation_run(client, experiment, copier, ids["teacher"], "student", "scratch", 0.5, 0, extra={
        "copy_rate_pixel": 0.9, "kid_heldout": 0.5, "kid_sd_heldout": 0.01, "kid_sd_train": 0.01,
        "kid": 0.01, "copy_rate": 0.4, "copy_rate_chance": 0.05, "copy_alarm": 1.0, "copy_p_value": 1e-9})
    html = build_report("syn", out_dir=tmp_path, log_run=False).read_text()
    table = pd.read_csv(tmp_path / "tables" / "quality.csv", keep_default_na=False)
    assert len(table) == 3 and set(table.N) == {32} and set(table.draws) == {10} and set(table.reference) == {"train"}
    row = table[table.method == "distill"].iloc[0]
    logged = client.get_run(ids["evaluations"][1]).data.metrics
    # the CSV: numbers, each score's sd over draws beside it; the page: "mean ± sd", as the registry formats it
    assert (row.kid, row.kid_sd, row.kid_floor, row.kid_floor_sd) == pytest.approx(
        (logged["kid"], logged["kid_sd"], logged["kid_floor"], logged["kid_floor_sd"]))
    assert f"<td>{format_value('kid', logged['kid'], logged['kid_sd'])}</td>" in html
    assert float(row.kid_z) == pytest.approx((logged["kid"] - logged["kid_floor"]) / logged["kid_floor_sd"])
    assert row.kid_heldout == "" and row.kid_train == row.kid  # not logged: empty, never 0
    assert "Every KID and FID is N generated vs N real images" in html
    assert "size 0.5 scratch: raw copy rate 0.90 (chance 0.01)" in html
    assert "size 0.5 scratch: copy alarm: copy rate 0.40 against 0.05 by chance (binomial p=1e-09)" in html
    assert "size 0.5 scratch: KID against held-out images 0.5 vs" in html and "memorisation sign" in html
    # its KID is at the floor, by copying: never called inside the floor's spread
    assert ("KID inside the spread of the real-vs-real floor in both feature spaces (within 2 sd over draws, N = 32 a "
            "side): none; not counted, since their copy test raised an alarm") in html and html.count("raised an alarm") == 1
    assert "copy test raised an alarm (their samples reproduce training images, so their KID is no sign of quality): " \
           "size 0.5 scratch." in html


def test_an_evaluation_by_an_older_dmat_is_shown_apart(store, tmp_path):
    ids = log_synthetic_study("syn", sizes=(0.5,), methods=("distill",), problems=False)
    client = MlflowClient()
    old = _evaluation_run(client, client.get_experiment_by_name("syn").experiment_id, ids["students"][0],
                          ids["teacher"], "student", "distill", 0.5, 1, artifacts=False, drop=("quality_n",))
    build_report("syn", out_dir=tmp_path, log_run=False)
    evaluations = pd.read_csv(tmp_path / "tables" / "evaluations.csv").set_index("run_id")
    assert np.isnan(evaluations.fid[old]) and evaluations.fid_legacy[old] == client.get_run(old).data.metrics["fid"]
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv")
    assert summary[summary.method == "distill"].n.iloc[0] == 2  # counted, but its FID is not averaged in
    assert summary[summary.method == "distill"].fid.iloc[0] == client.get_run(ids["evaluations"][1]).data.metrics["fid"]
    problems = pd.read_csv(tmp_path / "tables" / "problems.csv").set_index("run_id").problem
    assert problems[old].startswith("evaluated by an older dmat: FID/KID not at matched sample sizes")


def test_a_missing_interval_draws_no_error_bar():
    from matplotlib.collections import LineCollection

    from dmat.report import figures
    from dmat.report.tables import summary_table

    evaluations = pd.DataFrame({"method": ["distill"] * 3, "size_factor": [0.5, 0.5, 0.2], "seed": [0, 1, 0],
                                "num_parameters": [5e5, 5e5, 1e5], "kid": [0.02, 0.03, 0.05], "fid": [3.0, 4.0, 6.0],
                                "kid_floor": [0.01] * 3, "kid_floor_sd": [0.002] * 3})
    fig = figures.quality_figure(summary_table(evaluations))  # size 0.5: two evaluations; 0.2: one, no interval
    for ax in fig.axes:
        bars = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
        assert len(bars) == 1 and abs(bars[0][1][1] - bars[0][0][1]) > 0  # only 0.5's, and not of length 0
    assert any(p.get_label() == "floor ± sd over draws" for p in fig.axes[0].patches)


def test_flags_choose_sections_through_cli(store, tmp_path):
    log_synthetic_study("syn", sizes=(0.5,), problems=False, artifacts=False)
    result = CliRunner().invoke(cli, ["report", "--mse", "--experiment", "syn", "--out-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert _sections_in(html) == [s for s in SECTIONS if s not in ("denoising", "time", "trajectory")]
    assert "none: every model run finished" in html


def test_missing_artifacts_are_reported_not_drawn(store, tmp_path):
    log_synthetic_study("syn", sizes=(0.5,), problems=False, artifacts=False)
    html = build_report("syn", ["denoising", "trajectory"], out_dir=tmp_path, log_run=False).read_text()
    assert "no denoising/states.npz in the evaluations of: teacher, 0.5 distill, 0.5 scratch" in html
    assert "n/a: no trajectories/trajectories.npz artifact" in html
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"trajectory_divergence"}


def test_empty_or_unknown_experiment_is_one_clear_error(store, tmp_path):
    MlflowClient().create_experiment("empty")
    with pytest.raises(DmatError, match="has no teacher, student or evaluation runs"):
        build_report("empty", out_dir=tmp_path / "x")
    result = CliRunner().invoke(cli, ["report", "--experiment", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "no experiment 'nope'" in result.output
    assert _report_runs("empty").empty and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_notebook_runs_on_a_store(store, project_env):
    log_synthetic_study("dmat-test", sizes=(0.2, 0.5), problems=False)
    notebook = nbformat.read(ROOT / "notebooks" / "size_impact.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(Path.cwd())}},
                   env=project_env).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3


@pytest.mark.slow
def test_report_of_a_real_tiny_study(study, teacher_run_id, tmp_path, monkeypatch):
    """Tiny teacher, real students (the distilled one with 2 seeds) and their real evaluations with a 2-step grid:
    every section from MLflow alone, table = MLflow, the interval over seeds."""
    experiment = "report-e2e"  # its own experiment: other tests add students to the shared study's
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    students = [train_student(tiny_train(epochs=1, seed=seed), size, teacher_run_id, experiment, method=method,
                              student_steps=4)
                for size, method, seed in ((0.5, "distill", 0), (0.5, "distill", 1), (0.5, "scratch", 0))]
    extractor = train_feature_extractor("digits", 8, epochs=1, device="cpu", experiment=experiment)
    settings = dict(num_samples=96, steps="4", steps_grid=(2, 4), batch_size=96, num_trajectories=4, eps_timesteps=5,
                    device="cpu")
    evaluations = [evaluate_run(run_id, feature_extractor_run_id=extractor, experiment=experiment, **settings)
                   for run_id in [teacher_run_id, *students]]

    path = build_report(experiment, out_dir=tmp_path / "real")
    html = path.read_text()
    assert _sections_in(html) == list(SECTIONS)
    # every figure could be drawn from what the pipeline logged, but the scaling law's: one student size
    assert re.findall(r"n/a: [^<]*", html) == [
        "n/a: no sensitivity run in this store: run `dmat sensitivity --dataset NAME`",
        "n/a: no fit (at least 4 distinct sizes of one method, and a converged fit)"]
    summary = pd.read_csv(tmp_path / "real" / "tables" / "summary.csv")
    assert sorted(summary.method) == ["distill", "scratch", "teacher"]
    assert summary.set_index("method").loc["distill", ["n", "seeds"]].tolist() == [2, 2]  # a mean and interval of 2
    assert_table_matches_mlflow(summary, evaluations)
    frontier_points = pd.read_csv(tmp_path / "real" / "tables" / "frontier.csv")  # every model at 2 and 4 steps
    assert len(frontier_points) == 6 and set(frontier_points.steps) == {2, 4}
    assert sorted(frontier_points.n) == [1, 1, 1, 1, 2, 2]  # the distilled student's points: its 2 seeds' mean
    assert "Budget " in html and "no fit: 1 distinct size;" in html  # one student size: the law is not fitted


def test_scaling_fit_recovers_a_known_power_law_and_the_size_needed():
    from dmat.report.scaling import Reference, fit_law, law_sentence, needed_interval, needed_sentence, power_law

    l_inf, a, alpha, unit = 0.02, 0.05, 0.6, 1e6
    x = np.repeat(np.geomspace(2e4, unit, 7), 3)  # 7 sizes, 3 seeds each
    y = power_law(x / unit, l_inf, a, alpha) * (1 + np.random.default_rng(0).normal(0, 0.03, x.size))
    fit = fit_law(x, y)
    assert fit.problem is None and (fit.sizes, fit.points) == (7, 21)
    assert fit.alpha_ci[0] < alpha < fit.alpha_ci[1] and fit.alpha_ci[1] - fit.alpha_ci[0] < 0.5
    assert fit.l_inf_ci[0] < l_inf < fit.l_inf_ci[1]
    teacher = l_inf + a  # a teacher of `unit` parameters on the same law
    truth = unit * (a / (1.1 * teacher - l_inf)) ** (1 / alpha)  # 800,000: where L = 1.1 x the teacher's
    point, low, high, never = needed_interval(fit, 1.1 * teacher)
    assert low < truth < high and never == 0 and high / low < 2
    sentence = needed_sentence(fit, Reference(teacher, 0.0, unit), "KID vs parameters, distill", "parameters")
    assert sentence == (f"KID vs parameters, distill: within 10% of the teacher's 0.07 (<= 0.077) from about "
                        f"{point:,.0f} parameters, {point / unit:.0%} of the teacher's (95% interval "
                        f"{low:,.0f} to {high:,.0f} parameters, the teacher taken as exact).")
    assert law_sentence(fit, "KID", "parameters").startswith(f"KID: L = {fit.l_inf:.3g} + {fit.a:.3g} (N / 1,000,000 "
                                                             f"parameters)^-{fit.alpha:.2f}; exponent alpha")
    # a floor above 1.1 x the teacher: never, said as such
    assert "no size of this kind comes within 10%" in needed_sentence(fit, Reference(0.015, 0.0, unit), "KID",
                                                                      "parameters")


def test_scaling_fit_refuses_too_few_sizes_and_a_quality_that_does_not_fall():
    from dmat.report.scaling import fit_law, law_sentence

    two = fit_law([1e4, 1e4, 1e5, 1e5], [0.1, 0.11, 0.05, 0.06])
    assert two.problem == "2 distinct sizes; a fit of three parameters needs at least 4"
    assert law_sentence(two, "KID vs parameters", "parameters") == (
        "KID vs parameters: no fit: 2 distinct sizes; a fit of three parameters needs at least 4.")
    rising = fit_law([1e4, 3e4, 1e5, 3e5, 1e6], [0.01, 0.02, 0.03, 0.04, 0.05])
    assert rising.problem.startswith("the least-squares fit did not converge, found no fall with size")


def test_budget_frontier_and_its_bands_are_exactly_the_known_ones():
    from dmat.report.frontier import COSTS, band_sentences, budget_points, frontier, grid_points

    # (method, size, seed, steps, kid, flops per image, latency ms); the teacher at 5 steps is beaten by size 0.2
    # at 20 steps, which is cheaper and better: it is the one point off the frontier
    rows = [("distill", 0.2, 0, 5, 0.29, 1e6, 1.0), ("distill", 0.2, 1, 5, 0.31, 1e6, 1.2),
            ("distill", 0.2, 0, 20, 0.12, 4e6, 4.0), ("distill", 0.5, 0, 5, 0.20, 2.5e6, 2.0),
            ("distill", 0.5, 0, 20, 0.08, 1e7, 8.0), ("teacher", 1.0, 0, 5, 0.15, 5e6, 5.0),
            ("teacher", 1.0, 0, 20, 0.07, 2e7, 20.0)]
    evaluations = pd.DataFrame({"run_id": [f"{m}{z}-{s}" for m, z, s, *_ in rows], "method": [r[0] for r in rows],
                                "size_factor": [r[1] for r in rows], "model_seed": [r[2] for r in rows]})
    evaluations = evaluations.drop_duplicates("run_id")
    histories = pd.DataFrame([(f"{m}{z}-{s}", key, steps, value) for m, z, s, steps, kid, flops, ms in rows
                              for key, value in (("grid_kid", kid), ("grid_fid", 100 * kid),
                                                 ("grid_flops_per_image", flops), ("grid_latency_ms_per_image", ms))],
                             columns=["run_id", "key", "step", "value"])
    points = budget_points(grid_points(evaluations, histories))
    assert len(points) == 6 and points.n.max() == 2
    front = frontier(points, "flops_per_image")
    assert [(r.method, r.size_factor, r.steps) for r in front.itertuples()] == [
        ("distill", 0.2, 5), ("distill", 0.5, 5), ("distill", 0.2, 20), ("distill", 0.5, 20), ("teacher", 1.0, 20)]
    half = stats.t.ppf(0.975, 1) * np.std([0.29, 0.31], ddof=1) / np.sqrt(2)
    assert band_sentences(front, "flops_per_image") == [
        f"Below 1 MFLOPs ({COSTS['flops_per_image']}) no evaluated (size, steps) fits.",
        f"Budget from 1 MFLOPs to 2.5 MFLOPs ({COSTS['flops_per_image']}): best is size 0.2 distill at 5 steps "
        f"(KID 0.3 ± {half:.2g}).",
        f"Budget from 2.5 MFLOPs to 4 MFLOPs ({COSTS['flops_per_image']}): best is size 0.5 distill at 5 steps (KID 0.2).",
        f"Budget from 4 MFLOPs to 10 MFLOPs ({COSTS['flops_per_image']}): best is size 0.2 distill at 20 steps "
        "(KID 0.12).",
        f"Budget from 10 MFLOPs to 20 MFLOPs ({COSTS['flops_per_image']}): best is size 0.5 distill at 20 steps "
        "(KID 0.08).",
        f"Budget 20 MFLOPs and above ({COSTS['flops_per_image']}): best is teacher at 20 steps (KID 0.07)."]
    # latency frontier: the same here, as latency is proportional to FLOPs in this study
    assert frontier(points, "latency_ms_per_image")[["size_factor", "steps"]].equals(front[["size_factor", "steps"]])


def test_report_of_seeds_inits_and_a_steps_grid(store, tmp_path):
    """Four sizes x two seeds, a pruned-init variant of distill and a steps grid: intervals over seeds, the
    scaling law, the budget frontier and the training budget, all from MLflow alone."""
    log_synthetic_study("syn", sizes=(0.2, 0.4, 0.6, 0.8), methods=("distill",), seeds=(0, 1), steps_grid=(2, 5),
                        inits=(None, "pruned"), artifacts=False, problems=False)
    out = tmp_path / "out"
    html = build_report("syn", out_dir=out, log_run=False).read_text()
    assert {"scaling", "frontier"} <= set(_sections_in(html))
    assert {"scaling_law", "budget_frontier"} <= {p.stem for p in (out / "figures").glob("*.png")}
    summary = pd.read_csv(out / "tables" / "summary.csv")
    students = summary[summary.method == "distill"]
    assert set(students.init) == {"random", "pruned"} and set(students.n) == {2} and set(students.seeds) == {2}
    assert (students.kid_ci95 > 0).all() and (students.epochs_run == 4).all()
    assert (students.train_flops == 3 * 1e6 * students.size_factor * 1000 * 4).all()
    smallest = students[students.size_factor == 0.2]
    assert list(smallest.still_improving) == [1, 1]  # seed 0 of each init said so, seed 1 said no
    assert "Seeds: 2 to 2 runs per size and method (training seeds 0, 1)" in html
    first = html.index('<h2 id="answer">')
    assert html.index("<p class=note>Only the random-CNN features scored these models, so no size is said to be "
                      "within 10% of the teacher (a verdict needs both feature spaces)", first) < html.index("<table")
    answer = html.index("<p class=note>The answer: Only the random-CNN features scored these models, so no size is "
                        "said to be within 10% of the teacher in both feature spaces")
    assert ("By KID, no student size measured comes within 10% of the teacher (closest: size 0.8 distill, pruned init, "
            "1.22x the teacher&#x27;s, 95% interval 1.07x to 1.38x") in html
    summary = html.index('<h2 id="summary">')
    assert answer < html.index("<table", summary) and "At equal training compute the teacher" in html
    assert "one teacher run is shared by every student" in html
    assert "size 0.2 distill: pruned-init FID" in html and "Welch t-test over seeds, n=2 vs 2" in html
    assert "2 of 16 models were still improving when they stopped: size 0.2 distill, pruned init (seed 0), size " \
           "0.2 distill, random init (seed 0)" in html  # a study of both inits names the random one too
    assert "size 0.2 distill: pruned-init FID 20.5 vs random-init 24.4: pruned init better (Welch" in html
    # the grid: every size at 2, 5 and 10 steps, 2 seeds each; the frontier's bands are findings
    frontier_points = pd.read_csv(out / "tables" / "frontier.csv")
    assert len(frontier_points) == 2 * 4 * 3 + 3 and set(frontier_points.steps) == {2, 5, 10}
    assert html.count("Budget from ") >= 4 and "(sampling FLOPs per image): best is" in html
    assert "FID vs FLOPs per forward, distill, pruned init" in html  # the law says it is of runs still improving:
    assert ("KID vs parameters, distill, random init: at these training budgets (1 of 8 runs still improving when they stopped, so "
            "not the law of converged models), L = ") in html
    budget = pd.read_csv(out / "tables" / "budget.csv")
    assert len(budget) == 17 and budget.still_improving.value_counts().to_dict() == {"no": 14, "yes": 2, "unknown": 1}
    assert budget.still_improving[budget.method == "teacher"].item() == "unknown"  # it logged no flag: not "no"


def _evaluations(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """Hand-made evaluations of `rows` (each with its fid): the other metrics the report reads follow from fid, size."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.assign(run_id=[f"run{i}" for i in range(len(frame))], seed=0, kid=frame.fid / 100, kid_floor=0.01,
                        kid_floor_sd=0.002, num_parameters=2e6 * frame.size_factor ** 2,
                        latency_ms_per_image=1 + 4 * frame.size_factor)


def _evaluations_at(*image_sizes) -> pd.DataFrame:
    """A teacher at the first image size, distilled and scratch students of size 0.5 with seeds 0 and 1 at every
    image size (a smaller image: a higher FID, so that pooling would show)."""
    rows = [("teacher", 1.0, image_sizes[0], 0, 3.0)] + [
        (method, 0.5, px, seed, 4.0 + seed + 2.0 * (method == "scratch") + 32 / px)
        for px in image_sizes for method in ("distill", "scratch") for seed in (0, 1)]
    return _evaluations(rows, ["method", "size_factor", "image_size", "model_seed", "fid"])


def _evaluations_with_budgets(*budgets, teacher_epochs=100) -> pd.DataFrame:
    """A teacher trained for `teacher_epochs`, and students of size 0.5 (distilled and scratch from random weights,
    distilled from the pruned teacher) with seeds 0 and 1 at every budget (epochs): a longer budget, a lower FID, so
    that pooling would show."""
    kinds = (("distill", "random"), ("scratch", "random"), ("distill", "pruned"))
    rows = [("teacher", "random", 1.0, teacher_epochs, 0, 3.0)] + [
        (method, init, 0.5, epochs, seed, 4.0 + seed + 2.0 * (method == "scratch") - (init == "pruned") + 120 / epochs)
        for epochs in budgets for method, init in kinds for seed in (0, 1)]
    return _evaluations(rows, ["method", "init", "size_factor", "epochs", "model_seed", "fid"])


def _law_points(key: str, values: tuple, teacher) -> pd.DataFrame:
    """Scaling points: distilled students of 5 sizes on a known law per value of `key` (its floor L_inf scaled by
    values[0] / value), and a teacher of 2M parameters at `teacher` of that key."""
    x = np.geomspace(2e4, 1e6, 5)
    rows = [("distill", v, n, 0.02 * values[0] / v + 0.05 * (n / 1e6) ** -0.6) for v in values for n in x]
    points = pd.DataFrame(rows + [("teacher", teacher, 2e6, 0.06)], columns=["method", key, "num_parameters", "kid"])
    return points.assign(init="random", flops_per_forward=points.num_parameters, fid=100 * points.kid,
                         val_task_loss=points.kid)


def _kid_laws(scaling) -> list[str]:
    """The series of the KID-vs-parameters laws of a scaling_study."""
    return [law.split(":")[0] for law in scaling.laws if law.startswith("KID vs parameters")]


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_two_resolutions_of_one_size_are_two_models_everywhere():
    """A 16 px and a 32 px student of size 0.5 are two rows, two lines, two fits and two frontiers, each labelled
    with its resolution; nothing averages or joins them."""
    from dmat.report import curves, figures
    from dmat.report.findings import distill_vs_scratch, seeds_statement, smallest_near_teacher
    from dmat.report.frontier import COSTS, band_sentences, budget_points, frontier, grid_points
    from dmat.report.scaling import scaling_study
    from dmat.report.tables import format_table, summary_table

    evaluations = _evaluations_at(32, 16)
    table = summary_table(evaluations)
    distill = table[table.method == "distill"]
    assert distill.n.tolist() == [2, 2] and distill.image_size.tolist() == [32, 16]
    assert distill.fid.tolist() == [5.5, 6.5]  # each the mean of its own seeds, not 6.0 over all four
    assert list(format_table(table).columns[:4]) == ["method", "init", "image_size", "size_factor"]
    legend = _legend(figures.quality_figure(table).axes[0])
    assert {"distill, 32px", "distill, 16px", "scratch, 32px", "scratch, 16px", "teacher, 32px (0.03)",
            "real-vs-real floor, 16px (0.01)"} <= set(legend)

    lines = distill_vs_scratch(table, evaluations)  # Welch-tested within each resolution: n=2 vs 2, not 4 vs 4
    assert [line.split(" (Welch")[0] for line in lines] == [
        "size 0.5, 32px: distilled FID 5.5 vs scratch 7.5: no difference shown",  # n=2 vs 2, p=0.11: no claim
        "size 0.5, 16px: distilled FID 6.5 vs scratch 8.5: no difference shown"]
    assert all("n=2 vs 2" in line for line in lines)
    assert smallest_near_teacher(evaluations)[0].startswith("distill, 16px: not compared with the teacher's FID, "
                                                            "which is of 32px images")
    assert "Seeds: 2 to 2 runs per size and method" in seeds_statement(evaluations, pd.DataFrame(
        {"role": ["teacher"], "status": ["FINISHED"]}))[0]

    # per-timestep curves: one line per resolution, each the mean of its own runs
    histories = pd.DataFrame([(r.run_id, "traj_mse", step, r.image_size + r.model_seed)
                              for r in evaluations.itertuples() for step in range(3)],
                             columns=["run_id", "key", "step", "value"])
    ax = curves.trajectory_divergence_figure(histories, evaluations, [0.5]).axes[0]
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert lines == {"0.5 distill, 32px": 32.5, "0.5 distill, 16px": 16.5, "0.5 scratch, 32px": 32.5,
                     "0.5 scratch, 16px": 16.5}

    # the budget frontier: one per resolution, its bands said per resolution
    no_grid = pd.DataFrame(columns=["run_id", "key", "step", "value"])  # each evaluation: its own steps only
    points = budget_points(grid_points(evaluations.assign(steps=10, flops_per_forward=1e5 * evaluations.size_factor),
                                       no_grid))
    front = frontier(points, "flops_per_image")
    assert front.groupby("image_size").size().to_dict() == {16: 1, 32: 2}
    sentences = band_sentences(front, "flops_per_image")
    assert sentences[0].startswith("At 32px: Below 500 kFLOPs") and sentences[3].startswith("At 16px: Below")
    assert "best is size 0.5 distill at 10 steps" in sentences[4]
    fronts = {(q, c): frontier(points, c, q) for q in ("kid", "fid") for c in COSTS}
    legend = _legend(figures.frontier_figure(points, fronts, COSTS).axes[0])
    assert {"distill, 32px", "distill, 16px", "Pareto frontier, 32px", "Pareto frontier, 16px"} <= set(legend)

    # the scaling law: one fit per resolution; the size needed only at the teacher's
    scaling = scaling_study(_law_points("image_size", (32, 16), teacher=32))
    assert _kid_laws(scaling) == ["KID vs parameters, distill, 16px", "KID vs parameters, distill, 32px"]
    needed = [line for line in scaling.needed if line.startswith("KID vs parameters")]
    assert needed[0] == "KID vs parameters, distill, 16px: not compared with the teacher, whose KID is of 32px images."
    assert needed[1].startswith("KID vs parameters, distill, 32px: no student measured is known to come within 10% "
                                "of the teacher's")  # the law says 1.15e6 parameters, past the largest student's 1e6
    assert needed[1].endswith("an extrapolation: 1.1x the largest student measured, not a finding.")
    legend = _legend(figures.scaling_figure(scaling.panels).axes[0])
    assert {"distill, 16px", "distill, 32px"} <= set(legend)


@pytest.mark.parametrize("drop", [False, True])
def test_one_resolution_and_budget_keep_their_labels(drop):
    """One resolution and one student budget beside a teacher trained longer, as in a normal study (or a frame
    without image_size and epochs): no resolution or epochs column and neither in any label."""
    from dmat.report import figures
    from dmat.report.findings import distill_vs_scratch, smallest_near_teacher
    from dmat.report.tables import budget_table, format_table, quality_table, summary_table

    evaluations = _evaluations_at(32)
    evaluations = evaluations.assign(epochs=np.where(evaluations.method == "teacher", 60, 20))
    evaluations = evaluations.drop(columns=["image_size", "epochs"]) if drop else evaluations
    table = summary_table(evaluations)
    assert len(table) == 3
    assert list(format_table(table).columns[:5]) == ["method", "init", "size_factor", "n", "seeds"]
    assert not {"image_size", "epochs"} & set(quality_table(evaluations).columns)
    models = evaluations.assign(status="FINISHED").drop_duplicates(["method", "model_seed"])
    assert list(budget_table(models).columns[:4]) == ["method", "init", "size_factor", "seed"]
    assert set(_legend(figures.quality_figure(table).axes[0])) == {
        "distill", "scratch", "teacher (0.03)", "real-vs-real floor (0.01)", "floor ± sd over draws"}
    assert distill_vs_scratch(table, evaluations)[0].startswith("size 0.5: distilled FID 5.5 vs scratch 7.5")
    assert smallest_near_teacher(evaluations)[0].startswith("distill: no size is within 10% of the teacher's FID 3")


def test_two_budgets_of_one_size_are_two_models_everywhere():
    """Students of size 0.5 trained for 20 and for 60 epochs (beside a teacher of 100) are two rows, two lines, two
    fits and two frontier points, each labelled with its epochs; students are compared only within a budget."""
    from dmat.report import curves, figures
    from dmat.report.findings import distill_vs_scratch, pruned_vs_random
    from dmat.report.frontier import band_sentences, budget_points, frontier, grid_points
    from dmat.report.scaling import scaling_study
    from dmat.report.tables import format_table, namer, summary_table

    evaluations = _evaluations_with_budgets(20, 60)
    table = summary_table(evaluations)
    distill = table[(table.method == "distill") & (table.init == "random")]
    assert distill.n.tolist() == [2, 2] and distill.epochs.tolist() == [20, 60]
    assert distill.fid.tolist() == [10.5, 6.5]  # each the mean of its own seeds, not 8.5 over all four
    assert list(format_table(table).columns[:4]) == ["method", "init", "epochs", "size_factor"]
    legend = _legend(figures.quality_figure(table).axes[0])
    assert {"distill, random init, 20 epochs", "distill, random init, 60 epochs", "scratch, random init, 20 epochs",
            "distill, pruned init, 60 epochs", "teacher (0.03)"} <= set(legend)

    # Welch-tested within each budget: n=2 vs 2, not 4 vs 4
    lines = distill_vs_scratch(table, evaluations) + pruned_vs_random(evaluations)
    assert [line.split(" (Welch")[0] for line in lines] == [
        "size 0.5, 20 epochs: distilled FID 10.5 vs scratch 12.5: no difference shown",  # p=0.11 at n=2 vs 2
        "size 0.5, 60 epochs: distilled FID 6.5 vs scratch 8.5: no difference shown",
        "size 0.5 distill, 20 epochs: pruned-init FID 9.5 vs random-init 10.5: no difference shown",
        "size 0.5 distill, 60 epochs: pruned-init FID 5.5 vs random-init 6.5: no difference shown"]
    assert all("n=2 vs 2" in line for line in lines)
    # distilled students only at 20 epochs and scratch ones only at 60: nothing like with like to compare
    kept = {("teacher", 100), ("distill", 20), ("scratch", 60)}
    unlike = evaluations[[(m, e) in kept for m, e in zip(evaluations.method, evaluations.epochs)]]
    assert distill_vs_scratch(summary_table(unlike), unlike) == [
        "No size has both distilled and scratch students with evaluations."]

    # per-timestep curves: one line per budget, each the mean of its own runs
    histories = pd.DataFrame([(r.run_id, "traj_mse", step, r.epochs + r.model_seed)
                              for r in evaluations.itertuples() for step in range(3)],
                             columns=["run_id", "key", "step", "value"])
    ax = curves.trajectory_divergence_figure(histories, evaluations, [0.5]).axes[0]
    assert {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()} == {
        f"0.5 {kind}, {epochs} epochs": epochs + 0.5
        for kind in ("distill, random init", "scratch, random init", "distill, pruned init")
        for epochs in (20, 60)}

    # the budget frontier: a point per budget (the mean of its own 2 seeds), its best said with its epochs
    no_grid = pd.DataFrame(columns=["run_id", "key", "step", "value"])
    points = budget_points(grid_points(evaluations.assign(steps=10, flops_per_forward=1e5 * evaluations.size_factor),
                                       no_grid))
    assert points[points.method != "teacher"].n.tolist() == [2] * 6
    sentences = band_sentences(frontier(points, "flops_per_image"), "flops_per_image", name=namer(points))
    assert "best is size 0.5 distill, pruned init, 60 epochs at 10 steps" in sentences[1]

    # the scaling law: one fit per budget
    scaling = scaling_study(_law_points("epochs", (60, 20), teacher=100))
    assert _kid_laws(scaling) == ["KID vs parameters, distill, 20 epochs", "KID vs parameters, distill, 60 epochs"]
    assert {"distill, 20 epochs", "distill, 60 epochs"} <= set(_legend(figures.scaling_figure(scaling.panels).axes[0]))


def test_budget_frontier_legend_names_students_of_the_teachers_width():
    """A size-1.0 student has a legend entry of its own (its size's colour, a student marker), beside the teacher's
    star."""
    from matplotlib.colors import to_rgba

    from dmat.report.figures import frontier_figure, size_color
    from dmat.report.frontier import COSTS, frontier

    points = pd.DataFrame({"method": ["teacher", "distill", "distill"], "init": "random",
                           "size_factor": [1.0, 1.0, 0.5], "steps": 10, "kid": [0.05, 0.06, 0.09],
                           "fid": [5.0, 6.0, 9.0], "flops_per_image": [4e6, 4e6, 1e6],
                           "latency_ms_per_image": [4.0, 4.0, 1.0]})
    fronts = {(q, c): frontier(points, c, q) for q in ("kid", "fid") for c in COSTS}
    legend = frontier_figure(points, fronts, COSTS).axes[0].get_legend()
    handles = dict(zip(_legend(legend.axes), legend.legend_handles))
    assert list(handles) == ["size 0.5", "size 1", "teacher", "distill", "Pareto frontier"]
    assert handles["size 1"].get_marker() == "o" and handles["teacher"].get_marker() == "*"
    assert to_rgba(handles["size 1"].get_color()) == to_rgba(size_color(1.0))


def test_report_of_students_at_two_resolutions(store, tmp_path):
    """From MLflow: a distilled student of size 0.5 at the teacher's 8 px and one at 4 px are two summary rows, and
    the report's findings and frontier name each resolution."""
    teacher = log_synthetic_study("syn", sizes=(0.5,), methods=("distill",), problems=False, artifacts=False,
                                  steps_grid=(2,))["teacher"]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("syn").experiment_id
    low = _model_run(client, experiment, "student", "distill", 0.5, 0)
    evaluation = _evaluation_run(client, experiment, low, teacher, "student", "distill", 0.5, 0, artifacts=False,
                                 steps_grid=(2,))
    for run_id in (low, evaluation):
        client.set_tag(run_id, "dmat.image_size", "4")
    html = build_report("syn", ["summary", "frontier", "findings"], out_dir=tmp_path, log_run=False).read_text()
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv")
    distill = summary[summary.method == "distill"]
    assert len(distill) == 2 and sorted(distill.image_size) == [4, 8]
    assert "distill, 4px: not compared with the teacher&#x27;s FID, which is of 8px images" in html
    assert "distill, 8px: no size is within 10% of the teacher&#x27;s FID" in html
    assert "At 4px: Budget" in html and "At 8px: Budget" in html


def test_report_of_students_with_two_budgets(store, tmp_path):
    """From MLflow: students of size 0.6 trained for 20 epochs and others for 60 (`dmat distill --epochs 60`), each
    from random and from pruned weights, beside a teacher of 60 epochs: each evaluation gets its model's epochs, each
    budget is a summary row of its own, and pruned is compared with random within each budget."""
    ids = log_synthetic_study("syn", sizes=(0.6,), methods=("distill",), seeds=(0, 1), inits=(None, "pruned"),
                              problems=False, artifacts=False)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("syn").experiment_id
    for run_id in (ids["teacher"], *ids["students"]):
        client.log_param(run_id, "epochs", 60 if run_id == ids["teacher"] else 20)
    for init, seed in ((None, 0), (None, 1), ("pruned", 0), ("pruned", 1)):
        longer = _model_run(client, experiment, "student", "distill", 0.6, seed, init=init)
        client.log_param(longer, "epochs", 60)
        _evaluation_run(client, experiment, longer, ids["teacher"], "student", "distill", 0.6, seed, artifacts=False,
                        init=init)
    html = build_report("syn", ["summary", "findings"], out_dir=tmp_path, log_run=False).read_text()
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv")
    students = summary[summary.method == "distill"]
    assert students.n.tolist() == [2, 2, 2, 2]  # not two rows of 4 evaluations
    evaluations = pd.read_csv(tmp_path / "tables" / "evaluations.csv")
    assert sorted(evaluations.epochs) == [20] * 4 + [60] * 5  # the model's param: an evaluation run has none
    assert sorted(zip(students.init, students.epochs, students.n)) == [
        ("pruned", 20, 2), ("pruned", 60, 2), ("random", 20, 2), ("random", 60, 2)]
    assert "epochs" in pd.read_csv(tmp_path / "tables" / "budget.csv").columns
    for epochs in (20, 60):
        assert f"size 0.6 distill, {epochs} epochs: pruned-init FID" in html
    assert html.count("Welch t-test over seeds, n=2 vs 2") == 2 and "n=4 vs 4" not in html


def test_students_pruned_by_another_channel_ranking_are_other_models():
    """A Taylor-pruned and a magnitude-pruned student of one size are never pooled as seeds of one model."""
    from dmat.report.query import tidy_runs

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "status": "FINISHED", "start_time": 0,
                         "tags.dmat.init": ["pruned", "pruned", "random", None],
                         "params.prune_importance": ["magnitude", "taylor", "taylor", None]})
    assert list(tidy_runs(runs).init.fillna("untagged")) == ["pruned", "pruned (taylor)", "random", "untagged"]


def _caveats(html: str) -> list[str]:
    section = html.split('<h2 id="caveats">')[1].split("<h2 ")[0]
    return re.findall(r"<li>(.*?)</li>", section, flags=re.S)


def test_the_quick_study_says_so_on_the_first_screen(store, tmp_path):
    """A study whose pipeline ran with --preset quick says so right below its answer, with the command of the full
    study; a store without a pipeline run (stages run by hand) gets no such note."""
    log_synthetic_study("syn", sizes=(0.2, 0.5), methods=("distill",), artifacts=False, problems=False)
    first_screen = ("answer", "caveats")
    plain = _caveats(build_report("syn", sections=first_screen, out_dir=tmp_path / "a", log_run=False).read_text())
    assert not any("quick study" in item for item in plain)
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("syn").experiment_id, tags={"dmat.role": "pipeline"})
    client.log_param(run.info.run_id, "preset", "quick")
    client.set_terminated(run.info.run_id)
    html = build_report("syn", sections=first_screen, out_dir=tmp_path / "b", log_run=False).read_text()
    assert _sections_in(html) == list(first_screen)
    assert _caveats(html)[0].startswith("This is the quick study")
    assert "make study" in _caveats(html)[-1]  # the one command for the full study


def test_the_sensitivity_section_says_which_space_the_headline_is_in_and_shows_the_table(store, tmp_path):
    log_synthetic_study("syn", sizes=(0.5,), methods=("distill",), artifacts=False, problems=False)
    html = build_report("syn", sections=("sensitivity",), out_dir=tmp_path / "a", log_run=False).read_text()
    assert "random CNN" in html and "n/a: no sensitivity run in this store: run `dmat sensitivity" in html
    client = MlflowClient()  # a sensitivity run as dmat.evaluation.sensitivity logs it (its table, less the rows)
    run = client.create_run(client.get_experiment_by_name("syn").experiment_id,
                            tags={"dmat.role": "sensitivity", "dmat.dataset": "digits", "dmat.image_size": "16"})
    table = {"smallest": {"kid": {"noise": 0.05, "blur": None}, "kid_classifier": {"noise": None, "blur": 1.0}},
             "levels": {"noise": [0.05, 0.1], "blur": [0.5, 1.0]}, "units": {"noise": "sd", "blur": "px"},
             "quality_n": 200, "draws": 10, "z_detect": 2.0}
    client.log_dict(run.info.run_id, table, "sensitivity/table.json")
    client.set_terminated(run.info.run_id)
    html = build_report("syn", sections=("sensitivity",), out_dir=tmp_path / "b", log_run=False).read_text()
    assert "digits at 16px, N = 200 a side, 10 draws" in html and "n/a: no sensitivity run" not in html
    cells = re.sub(r"\s+", " ", html.split('<h2 id="sensitivity">')[1])
    assert "<th>metric</th> <th>noise (sd)</th> <th>blur (px)</th>" in cells
    assert "<td>kid</td> <td>0.05</td> <td>&gt; 1</td>" in cells  # detected from 0.05; no blur up to 1 is
    assert "<td>kid_classifier</td> <td>&gt; 0.1</td> <td>1</td>" in cells


def test_every_latency_is_its_models_side_by_side_forward_pass_times_the_steps():
    """Evaluations may run beside other stages, so their own latencies are not comparable; `dmat cost` times every
    model run in one process. An evaluation's latency, and each point of its steps grid, is its model's forward pass
    at the smallest batch timed times the sampling steps; without a cost run, the evaluations' own, said so."""
    from dmat.report.speed import OWN_LATENCY, one_latency

    evaluations = pd.DataFrame({"run_id": ["e0", "e1", "e2"], "model_run_id": ["m0", "m1", "m2"],
                                "steps": [10.0, 10.0, 20.0], "latency_ms_per_image": [90.0, 95.0, 99.0]})
    grid = "grid_latency_ms_per_image"
    histories = pd.DataFrame([("e0", grid, 5, 44.0), ("e0", grid, 10, 90.0), ("e0", "grid_kid", 5, 0.5),
                              ("e2", grid, 5, 30.0)], columns=["run_id", "key", "step", "value"])
    rows = [{"run_id": "m0", "batch_size": 1, "ms_per_forward": 4.0}, {"run_id": "m1", "batch_size": 1,
            "ms_per_forward": 4.5}, {"run_id": "m0", "batch_size": 256, "ms_per_forward": 300.0}]
    timed, points, label = one_latency(evaluations, histories, rows)
    assert label == "ms / image, batch 1, each evaluation's steps, timed side by side"
    assert timed.latency_ms_per_image.tolist()[:2] == [40.0, 45.0] and np.isnan(timed.latency_ms_per_image.iloc[2])
    assert points.value.tolist()[:3] == [20.0, 40.0, 0.5] and np.isnan(points.value.iloc[3])  # m2 was not timed
    own = one_latency(evaluations, histories, None)
    assert own[0] is evaluations and own[1] is histories and own[2] == OWN_LATENCY
