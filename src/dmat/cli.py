"""The `dmat` command line: thin wrappers that parse options and call the library.

Options are generated from the config dataclasses, so a new config field is a new option with the
same name everywhere (CLI, MLproject parameter, MLflow param). Every DmatError becomes one line on
stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing

import click

from dmat.config import STUDENT_TRAIN, DistillConfig, PipelineConfig, SweepConfig, TrainConfig, parse_sizes, replace
from dmat.diffusion import DiffusionConfig
from dmat.errors import DmatError
from dmat.evaluation.settings import EvalConfig
from dmat.unet import UNetConfig

ARCHITECTURE_FIELDS = ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions", "dropout")


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def config_options(cls, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (), defaults=None):
    """Add one `--field-name` option per dataclass field; unset options stay None (= the default,
    taken from `defaults` where given, e.g. the student training defaults)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in exclude]

    def decorate(command):
        for f in reversed(fields):
            kind, default = hints[f.name], getattr(defaults, f.name, f.default)
            tuple_field = typing.get_origin(kind) is tuple
            command = click.option(
                "--" + f.name.replace("_", "-"),
                f.name,
                type=str if tuple_field else kind,
                callback=(lambda ctx, param, v: None if v is None else _int_tuple(v)) if tuple_field else None,
                default=None,
                help=f"default: {','.join(map(str, default)) if tuple_field else default}",
            )(command)
        return command

    return decorate


def pick(cls, options: dict, base=None):
    """The options that belong to `cls`, applied over its defaults (or over `base`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return replace(base or cls(), **{k: v for k, v in options.items() if k in names})


def friendly_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DmatError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


experiment_option = click.option("--experiment", default=None, help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or dmat)")
resume_option = click.option("--resume", default=None, metavar="RUN_ID",
                             help="continue this KILLED or FAILED run from its last checkpoint, with its own options")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """dmat: how does model size change the quality, cost and behaviour of a diffusion model?"""


@cli.command()
@config_options(TrainConfig)
@config_options(UNetConfig, only=ARCHITECTURE_FIELDS)
@config_options(DiffusionConfig)
@experiment_option
@resume_option
@friendly_errors
def teacher(experiment, resume, **options):
    """Train the teacher (size factor 1.0) on a data set, as one MLflow run."""
    from dmat.resume import configs_from_run
    from dmat.teacher import train_teacher

    classes = (TrainConfig, UNetConfig, DiffusionConfig)
    bases = configs_from_run(resume, classes) if resume else (None,) * len(classes)
    run_id = train_teacher(*(pick(cls, options, base) for cls, base in zip(classes, bases)), experiment, resume)
    if run_id:  # None on the other processes under torchrun
        click.echo(f"teacher run {run_id}")


teacher_option = click.option("--teacher-run-id", default=None,
                              help="teacher run (default: the latest finished teacher for this data set and image size)")


def student_options(command):
    """The options `distill` and `students` share: teacher, distillation settings, training, experiment."""
    shared = (teacher_option, config_options(DistillConfig, exclude=("size_factor",)),
              config_options(TrainConfig, defaults=STUDENT_TRAIN), experiment_option)
    for decorate in reversed(shared):
        command = decorate(command)
    return command


def _student_configs(options: dict, train_base=STUDENT_TRAIN, distill_base=None) -> tuple[TrainConfig, dict]:
    """The training config (student defaults) and the DistillConfig settings other than the size factor."""
    settings = dataclasses.asdict(pick(DistillConfig, options, distill_base))
    settings.pop("size_factor")
    return pick(TrainConfig, options, train_base), settings


@cli.command()
@click.option("--size-factor", default=None, help="student width relative to the teacher, 0.01 to 1.0 (required unless --resume)")
@student_options
@resume_option
@friendly_errors
def distill(size_factor, teacher_run_id, experiment, resume, **options):
    """Train one student of the teacher at a size factor, as one MLflow run."""
    from dmat.distill import train_student

    train_base, distill_base = STUDENT_TRAIN, None
    if resume:  # the interrupted run's own options, unless given again
        from dmat import tracking
        from dmat.resume import configs_from_run

        train_base, distill_base = configs_from_run(resume, (TrainConfig, DistillConfig))
        size_factor = size_factor or distill_base.size_factor
        teacher_run_id = teacher_run_id or tracking.get_run(resume).data.params.get("teacher_run_id")
    if size_factor is None:
        raise DmatError("--size-factor is required: a number between 0.01 and 1.0")
    train, settings = _student_configs(options, train_base, distill_base)
    run_id = train_student(train, size_factor, teacher_run_id, experiment, resume=resume, **settings)
    click.echo(f"student run {run_id}")


@cli.command()
@click.option("--sizes", default=None, help="size factors, space or comma separated (default: 0.2 0.4 0.5 0.6 0.8 1.0)")
@student_options
@friendly_errors
def students(sizes, teacher_run_id, experiment, **options):
    """Train one student per size factor, one after another, against the same teacher."""
    from dmat.distill import train_students

    train, settings = _student_configs(options)
    outcomes = train_students(train, parse_sizes(sizes), teacher_run_id, experiment, **settings)
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
@experiment_option
@friendly_errors
def report(mse, denoising, time_, trajectory, all_sections, full_mse, out_dir, verbose, tracking_uri, experiment):
    """Cross-size comparison report from the tracking store (re-runs no model), logged as a report run."""
    import logging
    import os

    import mlflow

    from dmat.report import build_report, choose_sections

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    else:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = build_report(experiment, choose_sections(mse, denoising, time_, trajectory, all_sections), full_mse, out_dir)
    click.echo(f"report {path}")


@cli.command()
@click.option("--run-id", default=None, help="the teacher or student run to evaluate")
@click.option("--all", "all_runs", is_flag=True, help="every teacher and student run not yet evaluated with these settings")
@config_options(EvalConfig)
@click.option("--feature-extractor-run-id", default=None,
              help="classifier features of this run (default: the newest of the data set and size, else trained once)")
@click.option("--inception-weights", default=None, metavar="PATH",
              help="torch-fidelity Inception weights for --features inception (default: $DMAT_INCEPTION_WEIGHTS or torch's hub cache)")
@experiment_option
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
        click.echo(f"{len(run_ids)} model(s) evaluated; the others already had an evaluation with these settings")


@cli.command()
@click.option("--sizes", default=None, help="student size factors, space or comma separated (default: 0.2 0.4 0.5 0.6 0.8 1.0)")
@click.option("--methods", default="distill", help="student methods, space separated: distill and/or scratch")
@config_options(PipelineConfig, exclude=("sizes", "methods"))
@experiment_option
@friendly_errors
def pipeline(sizes, methods, experiment, **options):
    """The whole study: teacher, students, evaluations, report; reuses finished stages with the same parameters."""
    from dmat.pipeline import run_pipeline

    cfg = replace(pick(PipelineConfig, options), sizes=tuple(parse_sizes(sizes)), methods=tuple(methods.split()))
    result = run_pipeline(cfg, experiment)
    for stage in result.stages:
        how = "FAILED " + stage.error if stage.error else "reused" if stage.reused else f"{stage.seconds:7.1f} s"
        click.echo(f"{stage.label:<32} {how:<12} run {stage.run_id}")
    click.echo(f"pipeline run {result.run_id}")
    if result.failed:
        raise DmatError(f"{len(result.failed)} stage(s) failed: rerun the same command to retry them")


@cli.command()
@config_options(SweepConfig, exclude=("multi_objective",))
@click.option("--multi-objective", is_flag=True, help="minimise (FID, parameters) and log the Pareto front")
@click.option("--create-only", is_flag=True, help="create the study and exit: run this once before workers on other machines")
@click.option("--worker-of", default=None, hidden=True, help="internal: run trials for this sweep parent run")
@experiment_option
@friendly_errors
def sweep(multi_objective, create_only, worker_of, experiment, **options):
    """Optuna study over distillation settings and size factor; each trial is a student + evaluation run."""
    from dmat.sweep import create_study, run_sweep, work

    cfg = replace(pick(SweepConfig, options), multi_objective=multi_objective).validate()
    if worker_of:
        work(cfg, cfg.n_trials, worker_of, experiment)
        return
    if create_only:
        create_study(cfg)
        click.echo(f"study {cfg.study_name} ready in {cfg.storage}")
        return
    study = run_sweep(cfg, experiment)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    click.echo(f"study {cfg.study_name}: {len(study.trials)} trials, {len(done)} complete")
    if done and not multi_objective:
        click.echo(f"best FID {study.best_value:.3f}: {study.best_params}")


def main():
    cli()
