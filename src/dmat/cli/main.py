"""The `dmat` command line: thin wrappers that parse options and call the library.

Options come from the table in dmat.config.options (the MLproject file is rendered from it too), so a new
config field is a new option with the same name everywhere (CLI, MLproject parameter, MLflow param).
Every DmatError becomes one line on stderr and exit status 2; Ctrl-C or SIGTERM one line saying what
became of the run (exit status 128 + the signal); anything unexpected one line naming a log file that
holds the full traceback (exit status 1): dmat.cli.errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import click

from dmat import runtime
from dmat.cli.errors import friendly_errors
from dmat.config import STUDENT_TRAIN, CostConfig, DistillConfig, PipelineConfig, SweepConfig, TrainConfig, parse_sizes
from dmat.config.evaluation import EvalConfig
from dmat.config.options import command_options, pick
from dmat.errors import DmatError
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig

resume_option = click.option("--resume", default=None, metavar="RUN_ID",
                             help="continue this KILLED or FAILED run from its last checkpoint, with its own options")


# A tracking server that stops for good: MLflow's own defaults retry each request for about 20 minutes (7 retries,
# backoff factor 2, 120 s timeout) while the run looks alive. dmat gives up within about a minute, in this process and
# the stage processes it starts; a value the user set is kept.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """dmat: how does model size change the quality, cost and behaviour of a diffusion model?"""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    runtime.stop_with_starter()
    runtime.quiet_stage_output()  # a stage of a quiet pipeline: the pipeline prints its result line


@cli.command()
@command_options("teacher")
@resume_option
@friendly_errors
def teacher(experiment, resume, **options):
    """Train the teacher (size factor 1.0) on a data set, as one MLflow run."""
    from dmat.stages.resume import configs_from_run
    from dmat.stages.teacher import train_teacher

    classes = (TrainConfig, UNetConfig, DiffusionConfig)
    bases = configs_from_run(resume, classes) if resume else (None,) * len(classes)
    run_id = train_teacher(*(pick(cls, options, base) for cls, base in zip(classes, bases)), experiment, resume)
    if run_id:  # None on the other processes under torchrun
        click.echo(f"teacher run {run_id}")


def _student_configs(options: dict, train_base=STUDENT_TRAIN, distill_base=None) -> tuple[TrainConfig, dict]:
    """The training config (student defaults) and the DistillConfig settings other than the size factor."""
    settings = dataclasses.asdict(pick(DistillConfig, options, distill_base))
    settings.pop("size_factor")
    return pick(TrainConfig, options, train_base), settings


@cli.command()
@command_options("distill")
@resume_option
@friendly_errors
def distill(size_factor, teacher_run_id, experiment, resume, **options):
    """Train one student of the teacher at a size factor, as one MLflow run."""
    from dmat.stages.distill import train_student

    train_base, distill_base = STUDENT_TRAIN, None
    if resume:  # the interrupted run's own options, unless given again
        from dmat.stages.resume import student_settings_from_run

        train_base, distill_base, run_teacher = student_settings_from_run(resume)
        size_factor = size_factor or distill_base.size_factor
        teacher_run_id = teacher_run_id or run_teacher
    if size_factor is None:
        raise DmatError("--size-factor is required: a number between 0.01 and 1.0")
    train, settings = _student_configs(options, train_base, distill_base)
    run_id = train_student(train, size_factor, teacher_run_id, experiment, resume=resume, **settings)
    click.echo(f"student run {run_id}")


@cli.command()
@command_options("students")
@friendly_errors
def students(sizes, teacher_run_id, shared_teacher, experiment, **options):
    """Train one student per size factor against the same teacher, in one loop (or one after another)."""
    from dmat import tracking
    from dmat.stages.distill import train_students

    train, settings = _student_configs(options)
    loop_run = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run -e students` (a pipeline's loop): this process's run
    with tracking.kept_alive(loop_run) if loop_run else contextlib.nullcontext():  # so a live loop is never "stale"
        outcomes = train_students(train, parse_sizes(sizes), teacher_run_id, experiment, shared_teacher, **settings)
    for o in outcomes:
        click.echo(f"size {o.size_factor:<5g} {o.seconds:8.1f} s  " + (f"student run {o.run_id}" if o.run_id else f"FAILED {o.error}"))
    failed = [o for o in outcomes if o.error]
    click.echo(f"total {sum(o.seconds for o in outcomes):.1f} s; {len(outcomes) - len(failed)} of {len(outcomes)} students trained")
    if failed:
        raise DmatError(f"{len(failed)} size(s) failed: {', '.join(f'{o.size_factor:g}' for o in failed)} (see above)")


@cli.command()
@click.option("--mse", is_flag=True, help="add the size x timestep MSE heatmap")
@click.option("--denoising", is_flag=True, help="add the denoising process of teacher and students")
@click.option("--time", "time_", is_flag=True, help="add per-timestep error curves and latency vs size")
@click.option("--trajectory", is_flag=True, help="add trajectory divergence and the 2-D PCA of trajectories")
@click.option("--all", "all_sections", is_flag=True, help="every section (also what no section flag gives)")
@click.option("--full-mse", is_flag=True, help="heatmap rows for every size, not a readable subset")
@click.option("--out-dir", default=None, help="output folder (default: reports/<timestamp>)")
@click.option("--verbose", is_flag=True, help="log progress and timings; show artifact download progress")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
@command_options("report")
@friendly_errors
def report(mse, denoising, time_, trajectory, all_sections, full_mse, out_dir, verbose, tracking_uri, experiment):
    """Cross-size comparison report from the tracking store (re-runs no model), logged as a report run."""
    import logging
    import os

    import mlflow

    from dmat.report import build_report, choose_sections
    from dmat.tracking import check_writable, tag_report_path

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    check_writable(experiment)  # the report run could not be logged: say so before writing any file
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    else:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = build_report(experiment, choose_sections(mse, denoising, time_, trajectory, all_sections), full_mse, out_dir)
    click.echo(f"report {tag_report_path(path)}")  # absolute; on the report run too, for the pipeline's last lines


@cli.command()
@command_options("cost")
@friendly_errors
def cost(experiment, **options):
    """Time every teacher and student of the experiment side by side (one process, interleaved) as a cost run."""
    from dmat.evaluation.side_by_side import run_cost

    click.echo(f"cost run {run_cost(pick(CostConfig, options), experiment)}")


@cli.command()
@click.option("--dataset", default="digits", help="data set whose held-out split is corrupted and scored")
@click.option("--image-size", default=None, type=int, help="resolution (default: the data set's)")
@click.option("--num-samples", default=2000, type=int, help="as in evaluate: N = min(this, half the held-out split)")
@click.option("--floor-draws", default=10, type=int, help="K draws, as in evaluate")
@click.option("--seed", default=0, type=int)
@click.option("--device", default="auto")
@click.option("--feature-extractor-run-id", default=None, help="classifier run (default: the newest, else trained)")
@click.option("--experiment", default=None, help="MLflow experiment")
@friendly_errors
def sensitivity(**options):
    """Which corruptions each metric detects: held-out images under noise, blur, shift, class mix, scored like a model."""
    from dmat.evaluation.sensitivity import run_sensitivity

    click.echo(f"sensitivity run {run_sensitivity(**options)}")


@cli.command()
@click.option("--all", "all_runs", is_flag=True, help="every teacher and student run not yet evaluated with these settings")
@command_options("evaluate")
@friendly_errors
def evaluate(run_id, all_runs, feature_extractor_run_id, inception_weights, experiment, **options):
    """Evaluate a model (quality vs real data, behaviour vs its teacher, cost) as an evaluation run."""
    from dmat.evaluation.evaluate import evaluate_all, evaluate_run

    if bool(run_id) == all_runs:
        raise DmatError("give either --run-id RUN_ID or --all")
    args = (pick(EvalConfig, options), feature_extractor_run_id, inception_weights, experiment)
    run_ids = evaluate_all(*args) if all_runs else [evaluate_run(run_id, *args)]
    for new in run_ids:
        click.echo(f"evaluation run {new}")
    if all_runs:
        click.echo(f"{len(run_ids)} model(s) evaluated; the others already had (or were getting, in another process) an evaluation with these settings")


@cli.command()
@command_options("pipeline")
@click.option("--verbose", is_flag=True, help="show MLflow's INFO lines, here and in every stage")
@friendly_errors
def pipeline(preset, sizes, methods, inits, experiment, verbose, **options):
    """The whole study (--preset quick or full): teacher, students, evaluations, report; reuses finished stages."""
    from dmat.study.ending import closing_lines
    from dmat.study.pipeline import run_pipeline

    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    cfg = PipelineConfig.from_preset(
        preset or PipelineConfig.preset, sizes=tuple(parse_sizes(sizes)) if sizes else None,
        methods=tuple(methods.split()) if methods else None, inits=tuple(inits.split()) if inits else None,
        **{k: v for k, v in options.items() if k in fields})
    result = run_pipeline(cfg, experiment, verbose)
    for stage in result.stages:
        how = "FAILED " + stage.error if stage.error else "reused" if stage.reused else f"{stage.seconds:7.1f} s"
        click.echo(f"{stage.label:<32} {how:<12} run {stage.run_id}")
    click.echo("\n".join([f"pipeline run {result.run_id}", *closing_lines(result)]))
    if result.failed:
        raise DmatError(f"{len(result.failed)} stage(s) failed: rerun the same command to retry them")


@cli.command()
@click.option("--stale", is_flag=True, help="only runs whose process is gone (kill -9) or whose heartbeat stopped")
@click.option("--stale-minutes", default=None, type=float,
              help="a run on another host is stale after this many minutes without a heartbeat (default: 10)")
@click.option("--mark-killed", is_flag=True, help="mark the stale runs KILLED, so that --resume can continue them")
@friendly_errors
def runs(stale, stale_minutes, mark_killed):
    """Runs still marked RUNNING; --stale: those whose process is gone, to mark KILLED and resume."""
    from dmat.stages import stale as stale_runs
    from dmat.stages.resume import what_to_do
    from dmat.tracking import check_tracking_reachable

    if mark_killed and not stale:
        raise DmatError("--mark-killed marks stale runs only: add --stale")
    check_tracking_reachable()
    found = stale_runs.running_runs(stale_runs.STALE_MINUTES if stale_minutes is None else stale_minutes)
    found = [r for r in found if r.reason] if stale else found
    for r in found:
        click.echo(f"{r.run_id}  {r.role:<10} {r.name:<36} {r.where:<24} {r.reason or 'running'}")
    if mark_killed:
        stale_runs.mark_killed(found)
        for r in found:
            click.echo(f"marked {r.run_id} KILLED: {what_to_do(r.role, r.run_id)}")
    elif found and stale:
        click.echo(f"{len(found)} stale run(s): mark them KILLED with `dmat runs --stale --mark-killed`")
    if not found:
        click.echo("no stale runs" if stale else "no running runs")


@cli.command("check-model")
@click.argument("model_uri")
@friendly_errors
def check_model(model_uri):
    """Check that loading a logged model (models:/NAME@ALIAS, runs:/RUN_ID/sampler) runs only dmat's own
    serving code, on a private copy, and print that copy to serve."""
    from dmat.tracking.trusted_load import checked_copy

    local = checked_copy(model_uri)
    click.echo(f"{model_uri}: its loading runs only dmat's own serving code; serve the checked private copy with "
               f"`mlflow models serve -m {local} --env-manager local`")


@cli.command()
@command_options("sweep")
@click.option("--create-only", is_flag=True, help="create the study and exit: run this once before workers on other machines")
@click.option("--worker-of", default=None, hidden=True, help="internal: run trials for this sweep parent run")
@click.option("--worker-index", default=0, type=int, hidden=True, help="internal: this worker's number (its sampler seed)")
@friendly_errors
def sweep(create_only, worker_of, worker_index, experiment, **options):
    """Optuna study over distillation settings and size factor; each trial is a student + evaluation run."""
    from dmat.study.sweep import create_study, run_sweep, work

    cfg = pick(SweepConfig, options).validate()
    if worker_of:
        work(cfg, cfg.n_trials, worker_of, experiment, worker=worker_index)
        return
    if create_only:
        create_study(cfg)
        click.echo(f"study {cfg.study_name} ready in {cfg.storage}")
        return
    study = run_sweep(cfg, experiment)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    click.echo(f"study {cfg.study_name}: {len(study.trials)} trials, {len(done)} complete")
    if done and not cfg.multi_objective:
        click.echo(f"best FID {study.best_value:.3f}: {study.best_params}")


@cli.command()
@click.option("--out", "out", required=True, help="the results folder, e.g. results/digits (its name names the data set "
                                                    "in the README's Results block)")
@click.option("--readme", default="README.md", help="rewrite this README's Results block for the data set, where it "
                                                    "has its markers")
@click.option("--experiment", default=None, help="MLflow experiment of the study (default: $MLFLOW_EXPERIMENT_NAME)")
@friendly_errors
def results(out, readme, experiment):
    """Publish a finished study: results/<name>/ (report, tables, STUDY.md, results.md) and the README's block."""
    from pathlib import Path

    from dmat.report.results import export_results

    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    folder = export_results(experiment, Path(out), Path(readme) if readme else None)
    click.echo(f"results {folder.resolve()}")


def main():
    cli()
