"""One table of options: the CLI, the MLproject file and `to_cli_args` agree with it and each other."""

import shlex
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CLI_ARGS, tiny_diffusion, tiny_train, tiny_unet
from mlflow.projects import _project_spec

from dmat import tracking
from dmat.cli.main import cli
from dmat.config import STUDENT_TRAIN, SweepConfig, TrainConfig, with_overrides
from dmat.config.evaluation import EvalConfig
from dmat.config.mlproject import render_mlproject
from dmat.config.options import ARCHITECTURE_FIELDS, COMMANDS, pick, to_cli_args
from dmat.model.diffusion import DiffusionConfig
from dmat.model.unet import UNetConfig
from dmat.study.sweep import _worker_command

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {name: spec.entry_point for name, spec in COMMANDS.items() if spec.entry_point}
# options that make no sense as MLproject parameters (each entry point is a new MLflow run of its own)
CLI_ONLY = {"teacher": {"resume"}, "distill": {"resume"}, "students": {"shared_teacher"}, "evaluate": {"all_runs"}, "pipeline": {"verbose"}, "cost": set(),
            "sweep": {"create_only", "worker_of", "worker_index"},
            "report": {"mse", "denoising", "time_", "trajectory", "all_sections", "full_mse", "out_dir", "verbose",
                       "tracking_uri"}}
REQUIRED = {"distill": {"size_factor": "0.5"}, "evaluate": {"run_id": "abc"}}


def parse(command: str, args: list[str]) -> dict:
    """The keyword arguments `dmat COMMAND args` would call its function with."""
    return cli.commands[command].make_context(command, list(args)).params


def test_committed_mlproject_is_rendered_from_the_option_table():
    assert (ROOT / "MLproject").read_text() == render_mlproject(), "regenerate it: python -m dmat.config.mlproject > MLproject"


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_every_option_of_a_command_is_an_mlproject_parameter_of_the_same_name(command):
    entry = _project_spec.load_project(str(ROOT)).get_entry_point(ENTRY_POINTS[command])
    options = {p.name for p in cli.commands[command].params if p.name != "help"}
    assert options - CLI_ONLY[command] == set(entry.parameters)
    # MLflow's own templating (shell-quoted values) of the defaults parses back to the defaults; "" to None
    line = entry.compute_command(REQUIRED.get(command, {}), None)
    words = shlex.split(line)
    assert words[:4] == ["PYTHONPATH=src", "python", "-m", "dmat"] and words[4] == command
    params = parse(command, words[5:])
    for option in COMMANDS[command].options():
        if not option.required:
            assert params[option.name] == option.default, option.name


def test_student_options_default_to_the_student_training_defaults():
    params = parse("distill", ["--size-factor", "0.5"])
    assert pick(TrainConfig, params, STUDENT_TRAIN) == STUDENT_TRAIN
    assert {o.name: o.default for o in COMMANDS["distill"].options()}["epochs"] == STUDENT_TRAIN.epochs


def test_to_cli_args_round_trips_through_the_teacher_options():
    train = TrainConfig(dataset="mnist", image_size=28, lr=1e-5, grad_clip=0.5, sampler="ddpm", seed=3)
    unet = UNetConfig(image_size=28, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                      attention_resolutions=(), dropout=0.0)  # image_size: the training option's
    diffusion = DiffusionConfig(timesteps=37, schedule="linear", prediction="v")
    args = [*to_cli_args(train), *to_cli_args(unet, only=ARCHITECTURE_FIELDS), *to_cli_args(diffusion)]
    params = parse("teacher", args)
    assert pick(TrainConfig, params) == train
    assert pick(UNetConfig, params) == unet
    assert pick(DiffusionConfig, params) == diffusion


def test_tiny_cli_args_are_the_tiny_configs():
    params = parse("teacher", TINY_CLI_ARGS)
    assert pick(TrainConfig, params) == tiny_train()
    assert pick(UNetConfig, params) == tiny_unet(image_size=tiny_train().image_size)
    assert pick(DiffusionConfig, params) == tiny_diffusion()


@pytest.mark.parametrize("multi_objective", [True, False])
def test_to_cli_args_round_trips_a_sweep_config_and_its_bool(multi_objective):
    cfg = SweepConfig(storage="sqlite:///x.db", study_name="s", n_trials=3, multi_objective=multi_objective,
                      teacher_run_id="t", min_size_factor=0.1, device="cpu")
    args = to_cli_args(cfg)
    assert args[args.index("--multi-objective") + 1] == str(multi_objective).lower()
    # over a base with the other value, so "false" must be read as false, not as not given
    assert pick(SweepConfig, parse("sweep", args), with_overrides(cfg, multi_objective=not multi_objective)) == cfg


def test_a_bool_option_alone_means_true():
    assert parse("sweep", ["--multi-objective"])["multi_objective"] is True
    assert parse("sweep", ["--multi-objective", "False", "--seed", "1"])["multi_objective"] is False
    assert parse("sweep", [])["multi_objective"] is None


def test_sweep_workers_get_the_studys_own_settings():
    cfg = SweepConfig(study_name="s", n_trials=10, workers=3, multi_objective=True, teacher_run_id="t", num_samples=99)
    command = _worker_command(cfg, 4, "parent", "exp", worker=2)
    assert command[1:4] == ["-m", "dmat", "sweep"]
    params = parse("sweep", command[4:])
    assert (params["worker_of"], params["worker_index"], params["experiment"]) == ("parent", 2, "exp")
    assert pick(SweepConfig, params) == with_overrides(cfg, n_trials=4, workers=1)


def test_one_worker_sweeps_reproducibly_and_workers_sample_differently():
    from dmat.study.sweep import default_sampler

    def proposals(sampler):
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("lr", 1e-5, 1e-2, log=True) for _ in range(3)]

    cfg = SweepConfig(seed=3)
    assert proposals(default_sampler(cfg)) == proposals(default_sampler(cfg))
    assert proposals(default_sampler(cfg, worker=1)) != proposals(default_sampler(cfg))


def test_to_cli_args_round_trips_an_eval_config():
    cfg = EvalConfig(num_samples=80, sampler="ddpm", steps="student", features="inception", batch_size=40, device="cpu")
    assert pick(EvalConfig, parse("evaluate", to_cli_args(cfg))) == cfg


@pytest.mark.parametrize("text, value", [("False", False), ("false", False), ("true", True), ("True", True)])
def test_bool_params_decode(text, value):
    assert tracking.config_from_params(SweepConfig, {"multi_objective": text}).multi_objective is value
