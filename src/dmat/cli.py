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

from dmat.config import TrainConfig, replace
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


def config_options(cls, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()):
    """Add one `--field-name` option per dataclass field; unset options stay None (= the default)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in exclude]

    def decorate(command):
        for f in reversed(fields):
            kind = hints[f.name]
            tuple_field = typing.get_origin(kind) is tuple
            command = click.option(
                "--" + f.name.replace("_", "-"),
                f.name,
                type=str if tuple_field else kind,
                callback=(lambda ctx, param, v: None if v is None else _int_tuple(v)) if tuple_field else None,
                default=None,
                help=f"default: {','.join(map(str, f.default)) if tuple_field else f.default}",
            )(command)
        return command

    return decorate


def pick(cls, options: dict):
    """The options that belong to `cls`, applied over its defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return replace(cls(), **{k: v for k, v in options.items() if k in names})


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """dmat: how does model size change the quality, cost and behaviour of a diffusion model?"""


@cli.command()
@config_options(TrainConfig)
@config_options(UNetConfig, only=ARCHITECTURE_FIELDS)
@config_options(DiffusionConfig)
@experiment_option
@friendly_errors
def teacher(experiment, **options):
    """Train the teacher (size factor 1.0) on a data set, as one MLflow run."""
    from dmat.teacher import train_teacher

    run_id = train_teacher(pick(TrainConfig, options), pick(UNetConfig, options), pick(DiffusionConfig, options),
                           experiment)
    click.echo(f"teacher run {run_id}")


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


def main():
    cli()
