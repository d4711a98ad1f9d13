"""Config dataclasses as command-line options and back; the MLproject file is rendered from the same table.

`COMMANDS` says once which config fields and other options each `dmat` command takes. The CLI's
decorators (`command_options`), the MLproject entry points (`dmat.config.mlproject`, regenerate with
`python -m dmat.config.mlproject > MLproject`) and `to_cli_args` all read it, so an option, its MLproject
parameter and their defaults cannot drift apart. Options a command has besides these (report
section flags, --resume, --all, ...) make no sense as MLproject parameters and live in cli.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field

import click
import yaml

from dmat.config import (
    DEFAULT_SIZE_FACTORS,
    STUDENT_TRAIN,
    CostConfig,
    DistillConfig,
    PipelineConfig,
    SweepConfig,
    TrainConfig,
    with_overrides,
)
from dmat.config.codec import encode_param
from dmat.config.evaluation import EvalConfig
from dmat.config.study import FULL, PRESET_FIELDS, QUICK
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig

ARCHITECTURE_FIELDS = ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions", "dropout")


def _numbers(text: str, kind: type = int) -> tuple:
    try:
        return tuple(kind(part) for part in re.split(r"[,\s]+", str(text)) if part)
    except ValueError:
        raise click.BadParameter(f"expected {'integers' if kind is int else 'numbers'} separated by commas or "
                                 f"spaces, got {text!r}") from None


def _number(text: str | None, kind: type) -> int | float | None:
    """An int or float option that may be "" (not given): MLflow passes a float parameter as "12" or "12.0"."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"expected a number, got {text!r}") from None
    if kind is int and not value.is_integer():
        raise click.BadParameter(f"expected an integer, got {text!r}")
    return kind(value)


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _switch(text: str) -> bool:
    if text.strip().lower() not in ("true", "false", "1", "0"):
        raise click.BadParameter(f"expected true or false, got {text!r}")
    return text.strip().lower() in ("true", "1")


def _system_metrics(on: bool) -> None:
    """--system-metrics sets MLflow's own switch, so the processes a command starts (pipeline stages) follow it;
    dmat.tracking turns system metrics on for training and evaluation runs unless it is false."""
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true" if on else "false"


@dataclass(frozen=True)
class Option:
    """One option: `--dashed-name` on the CLI, `name` as keyword argument and MLproject parameter.

    `default` is what the command applies when the option is not given (MLproject's default; None
    is passed as "", which the CLI reads as not given). The CLI itself passes `cli_default`, None for
    config fields, so an unset option keeps the config's (or a resumed run's) value.
    """

    name: str
    help: str
    default: object = None
    kind: object = str  # the field's type hint: str, int, float, bool, tuple[int, ...] or tuple[float, ...]
    cli_default: object = None
    mlproject_type: str | None = None  # default: float for numbers, else string
    required: bool = False  # an MLproject parameter without a default (the CLI checks it itself)
    metavar: str | None = None
    apply: typing.Callable[[bool], None] | None = None  # a process-wide bool switch, applied when parsed
    mlproject: bool = True  # False: a CLI-only option, not a parameter of the command's entry point

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def options(self) -> list[Option]:
        return [self]

    def decorate(self, command):
        if self.apply is not None:  # applied as parsed; "" (MLproject's not given) leaves it alone and reads None
            return click.option(self.flag, self.name, type=str, is_flag=False, flag_value="true", help=self.help,
                                metavar="[true|false]", callback=lambda ctx, param, v: self._applied(v))(command)
        kwargs = dict(type=self.kind, default=self.cli_default, help=self.help, metavar=self.metavar)
        if typing.get_origin(self.kind) is tuple:
            kwargs.update(type=str, callback=lambda ctx, param, v: self._tuple(v))
        elif self.kind is bool and self.default is None:  # a preset's switch: MLproject passes "" for not given
            kwargs.update(type=str, is_flag=False, flag_value="true", metavar=self.metavar or "[true|false]",
                          callback=lambda ctx, param, v: _switch(v) if v else None)
        elif self.kind is bool:  # `--flag` alone is true; `--flag false` lets MLproject pass a value
            kwargs.update(type=click.BOOL, is_flag=False, flag_value=True, metavar=self.metavar or "[true|false]")
        elif self.default is None and self.kind in (int, float):  # MLproject passes "" for not given
            kwargs.update(type=str, callback=lambda ctx, param, v: _number(v, self.kind),
                          metavar=self.metavar or self.kind.__name__.upper())
        elif self.default is None:
            kwargs.update(callback=lambda ctx, param, v: v or None)
        return click.option(self.flag, self.name, **kwargs)(command)

    def _tuple(self, text: str | None) -> tuple | None:
        """Numbers of the field's element type; for an option whose default a preset sets, "" is not given (as MLproject passes it) and
        "none" the empty tuple."""
        if text is None or (self.default is None and not text):
            return None
        return () if self.default is None and text.strip().lower() == "none" else _numbers(
            text, typing.get_args(self.kind)[0])

    def _applied(self, text: str | None) -> bool | None:
        if not text:
            return None
        self.apply(on := _switch(text))
        return on

    def mlproject_parameter(self) -> str:
        kind = self.mlproject_type or ("float" if self.kind in (int, float) and self.default is not None else "string")
        if self.required:
            return kind if kind == "float" else f"{{type: {kind}}}"
        text = "" if self.default is None else encode_param(self.default)
        # plain where YAML reads back the same text, since MLflow passes (and logs) str(default)
        plain = kind == "float" or (re.fullmatch(r"[\w.-]+", text) and yaml.safe_load(text) == text)
        return f"{{type: {kind}, default: {text if plain else json.dumps(text)}}}"


@dataclass(frozen=True)
class OptionGroup:
    """One option per field of a config dataclass; `defaults` (an instance) supplies other defaults
    than the class's own (the student training defaults), `helps` other help ("{}": the default)."""

    cls: type
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    defaults: object = None
    helps: dict[str, str] = field(default_factory=dict)

    def options(self) -> list[Option]:
        hints = typing.get_type_hints(self.cls)
        out = []
        for f in dataclasses.fields(self.cls):
            if (self.only is None or f.name in self.only) and f.name not in self.exclude:
                default = getattr(self.defaults, f.name, f.default)
                help_ = self.helps.get(f.name, "{}").format(f"default: {_show(default)}")
                out.append(Option(f.name, help_, default, hints[f.name]))
        return out


@dataclass(frozen=True)
class CommandOptions:
    """A CLI command's table-driven options, and the MLproject entry point that runs it (if any)."""

    entry_point: str | None
    items: tuple[Option | OptionGroup, ...]
    fixed_args: tuple[str, ...] = ()  # CLI arguments the entry point always passes

    def options(self) -> list[Option]:
        return [option for item in self.items for option in item.options()]


def _decorator(options: list[Option]):
    def decorate(command):
        for option in reversed(options):
            command = option.decorate(command)
        return command

    return decorate


EXPERIMENT = Option("experiment", "MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or dmat)")
SYSTEM_METRICS = Option("system_metrics", "log CPU, memory and GPU use as system/* metrics of training and evaluation "
                                          "runs (default: true, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false)",
                        kind=bool, apply=_system_metrics)
DEFAULT_SIZES = " ".join(map(str, DEFAULT_SIZE_FACTORS))
# the convergence recipe's levers (dmat.training.losses, .schedule, .best); off by default
TRAIN_HELPS = {
    "snr_gamma": "weight the training loss's timesteps by min-SNR-gamma (Hang et al. 2023; 5 is theirs); the "
                 "validation loss stays unweighted ({}: uniform)",
    "lr_schedule": "constant, or cosine: decay to --lr-floor x lr at the last of --epochs ({})",
    "lr_warmup_epochs": "raise the lr linearly from 0 over these first epochs ({})",
    "lr_floor": "where --lr-schedule cosine ends, as a share of the peak lr ({})",
    "lr_width_scaling": "train a student at lr x (teacher base channels / its own)^0.5 (EDM2; {})",
    "stop_when_converged": "also stop early when the slope test finds the validation loss converged "
                           "(dmat.training.convergence; from epoch 20, three verdicts in a row; {})"}
# pipeline options a preset sets: not given (None) unless the user gives them, so the preset decides
PRESET_DEFAULTS = type("PresetDefaults", (), dict.fromkeys(PRESET_FIELDS))()
STUDENT_ITEMS = (
    Option("teacher_run_id", "teacher run: a run id, models:/NAME@ALIAS or models:/NAME/VERSION (default: the latest "
                             "finished teacher for this data set and image size)"),
    OptionGroup(DistillConfig, exclude=("size_factor",), helps={
        "student_image_size": "the student's resolution, at most the teacher's; below it, the student trains on teacher "
                              "samples mixed with real images (README, dmat.stages.resolution) ({}: the teacher's)",
        "teacher_sample_fraction": "share of teacher samples in a lower-resolution distill student's training "
                                   "images ({})"}),
    OptionGroup(TrainConfig, defaults=STUDENT_TRAIN, helps=TRAIN_HELPS),
    SYSTEM_METRICS,
    EXPERIMENT,
)

COMMANDS: dict[str, CommandOptions] = {
    "teacher": CommandOptions("teacher", (
        OptionGroup(TrainConfig, helps=TRAIN_HELPS), OptionGroup(UNetConfig, only=ARCHITECTURE_FIELDS),
        OptionGroup(DiffusionConfig),
        SYSTEM_METRICS, EXPERIMENT)),
    "distill": CommandOptions("distill", (
        Option("size_factor", "student width relative to the teacher, 0.01 to 1.0 (required unless --resume)",
               mlproject_type="float", required=True),
        *STUDENT_ITEMS)),
    "students": CommandOptions("students", (
        Option("sizes", f"size factors, space or comma separated (default: {DEFAULT_SIZES})"),
        # the entry point always shares the pass: one by one, each student would take over the entry point's run
        Option("shared_teacher", "train the sizes in one loop that runs the teacher once per batch for all of them "
                                 "(the same results as one by one; default: true)", default=True, kind=bool,
               cli_default=True, mlproject=False),
        *STUDENT_ITEMS)),
    "evaluate": CommandOptions("evaluate", (
        Option("run_id", "the teacher or student to evaluate: a run id, models:/NAME@ALIAS or models:/NAME/VERSION",
               required=True),
        OptionGroup(EvalConfig),
        Option("feature_extractor_run_id",
               "classifier features of this run (default: the newest of the data set and size, else trained once)"),
        Option("inception_weights", "torch-fidelity Inception weights for --features inception "
                                    "(default: $DMAT_INCEPTION_WEIGHTS or torch's hub cache)", metavar="PATH"),
        SYSTEM_METRICS, EXPERIMENT)),
    "report": CommandOptions("report", (EXPERIMENT,), fixed_args=("--all",)),
    "pipeline": CommandOptions("main", (
        Option("preset", "quick: the whole study in about 15 minutes on a laptop CPU, from models still improving; "
                         "full: every model trained until converged, both inits and methods, three seeds "
                         "(default: quick; each value below overrides the preset's)", default="quick"),
        Option("sizes", "student size factors, space or comma separated (default: the preset's)"),
        Option("methods", "student methods, space separated: distill and/or scratch (default: the preset's)"),
        Option("inits", "student initialisations, space separated: random and/or pruned (the teacher's weights cut "
                        "down by channel pruning; default: the preset's)"),
        OptionGroup(PipelineConfig, exclude=("preset", "sizes", "methods", "inits"), defaults=PRESET_DEFAULTS,
                    helps={"reuse_any_commit": "reuse a finished stage with the same parameters even if it ran at another "
                                                "git commit or from uncommitted changes ({})",
                           "workers": "stages run at once on this machine, each with its share of the CPU threads "
                                      "and, with several GPUs, one GPU each (0: what pays on this hardware; {})",
                           "executor": "local (this machine) or ray (a Ray cluster: every stage a Ray task; {})",
                           "ray_address": "the Ray cluster for --executor ray ($RAY_ADDRESS, else a local instance)",
                           **{name: f"the preset's: quick {_show(QUICK[name]) or 'none'}, full {_show(FULL[name])}"
                              for name in PRESET_FIELDS}}),
        SYSTEM_METRICS, EXPERIMENT)),
    "cost": CommandOptions("cost", (OptionGroup(CostConfig), EXPERIMENT)),
    "sweep": CommandOptions("sweep", (
        OptionGroup(SweepConfig, helps={"multi_objective": "minimise (FID, parameters) and log the Pareto front ({})",
                                        "workers": "worker processes, each running its share of the trials ({})",
                                        "executor": "local (the workers on this machine) or ray (each worker a Ray "
                                                    "task; {})",
                                        "ray_address": "the Ray cluster for --executor ray ($RAY_ADDRESS, else a "
                                                       "local instance)"}),
        SYSTEM_METRICS, EXPERIMENT)),
}


def command_options(command: str):
    """The click decorator that adds a command's options from `COMMANDS`."""
    return _decorator(COMMANDS[command].options())


def pick(cls, options: dict, base=None):
    """The options that belong to `cls`, applied over its defaults (or over `base`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return with_overrides(base or cls(), **{k: v for k, v in options.items() if k in names})


def to_cli_args(config, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
    """The inverse of the option generator: `["--field-name", "value", ...]` that parse back to `config`."""
    options = OptionGroup(type(config), only, exclude).options()
    return [arg for option in options for arg in (option.flag, encode_param(getattr(config, option.name)))]
