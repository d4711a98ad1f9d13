"""--compile auto: chosen by timing a few real steps of each candidate, logged with the run; --precision auto
decided by the hardware, never timed; a forced compile, or one candidate left, is obeyed without timing anything."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet

from dmat import runtime
from dmat.errors import DmatError
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.stages import tuning
from dmat.stages.teacher import train_teacher
from dmat.training import autotune
from dmat.training.autotune import Candidate, choose, tune
from dmat.training.loop import DiffusionLoss

CPU = torch.device("cpu")


def _model_objective_batch():
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8, dropout=0.1))
    return model, DiffusionLoss(GaussianDiffusion(tiny_diffusion())), torch.randn(16, 1, 8, 8)


def _two_candidates(monkeypatch):
    """Two candidates that both run on any CPU (eager fp32 and eager bf16), so the timing itself is exercised
    here; on a real run the candidates are eager and compiled, and compiling is tried on CUDA only. A forced
    compile is still the only candidate."""
    real = autotune.candidates
    monkeypatch.setattr(autotune, "candidates", lambda precision, compile, device: (
        [Candidate("fp32", "off"), Candidate("bf16", "off")] if compile == "auto" else real(precision, compile, device)))


def test_auto_times_each_candidate_on_the_model_and_leaves_model_and_random_streams_as_found(monkeypatch):
    _two_candidates(monkeypatch)
    model, objective, batch = _model_objective_batch()
    weights, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    tuned = tune(model, objective, batch, CPU, "fp32", "auto", steps=2)
    timed = {c.name: c for c in tuned.candidates if math.isfinite(c.step_seconds)}  # one may stop early: too slow
    assert set(timed) == {"fp32", "bf16"} and all(c.step_seconds > 0 and c.warmup_seconds > 0 for c in timed.values())
    assert abs(timed["bf16"].loss - timed["fp32"].loss) < 0.05 * timed["fp32"].loss  # same batch, noise, dropout
    assert tuned.compile == "off" and tuned.reason.startswith("measured")
    assert set(tuned.metrics()) == {"autotune.fp32.step_seconds", "autotune.bf16.step_seconds", "autotune.seconds"}
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_a_cpu_compiling_is_not_tried_so_auto_is_eager_at_no_cost(monkeypatch, precision):
    monkeypatch.setattr(autotune, "_measure", _never)
    tuned = tune(*_model_objective_batch(), CPU, precision)
    assert (tuned.precision, tuned.compile) == (precision, "off") and "only candidate" in tuned.reason
    assert [c.name for c in tuned.candidates if c.error] == [f"{precision}+compile"]
    assert tuned.metrics() == {}


def test_tuning_needs_a_resolved_precision():
    with pytest.raises(DmatError, match="resolved precision, fp32 or bf16, got 'auto'"):
        tune(*_model_objective_batch(), CPU, "auto")


@pytest.mark.parametrize("precision, compile", [("fp32", "off"), ("bf16", "off"), ("bf16", "auto"), ("fp32", "on")])
def test_a_forced_compile_is_obeyed_without_timing(monkeypatch, precision, compile):
    monkeypatch.setattr(autotune, "_measure", _never)
    tuned = tune(*_model_objective_batch(), CPU, precision, compile)
    assert (tuned.precision, tuned.compile) == (precision, "off" if compile == "auto" else compile)


def _never(*args):
    raise AssertionError("nothing is timed when nothing is left to choose")


def _timed(name: str, seconds: float, loss: float = 1.0, error: str | None = None) -> Candidate:
    precision, _, compiled = name.partition("+")
    return Candidate(precision, "on" if compiled else "off", seconds, 0.1, loss, error)


def test_the_fastest_within_tolerance_wins_and_doubt_falls_back_to_fp32_eager():
    assert choose([_timed("fp32", 1.0), _timed("bf16", 0.7)]).precision == "bf16"
    faster = choose([_timed("fp32", 1.0), _timed("bf16", 0.8), _timed("fp32+compile", 0.5)])
    assert (faster.precision, faster.compile) == ("fp32", "on") and "2.00x" in faster.reason
    tie = choose([_timed("fp32", 1.0), _timed("bf16", 0.95)])  # within the timing noise: no gain worth a change
    assert (tie.precision, tie.compile) == ("fp32", "off")
    off = [_timed("fp32", 1.0, loss=1.0), _timed("bf16", 0.5, loss=1.2)]
    assert choose(off).precision == "fp32" and "not within 5%" in off[1].error
    failed = choose([_timed("fp32", 1.0), _timed("fp32+compile", math.nan, error="BackendCompilerFailed: no")])
    assert (failed.precision, failed.compile) == ("fp32", "off")
    broken = choose([_timed("fp32", math.nan, error="OutOfMemoryError"), _timed("bf16", 0.5)])
    assert (broken.precision, broken.compile) == ("fp32", "off") and "fp32 failed" in broken.reason


def test_compile_is_checked_and_compiled_wraps_only_when_on():
    with pytest.raises(DmatError, match="compile must be auto, on, off, got 'yes'"):
        tiny_train(compile="yes").validate()
    model = torch.nn.Linear(2, 2)
    assert autotune.compiled(model, "off") is model and autotune.compiled(model, "auto") is model
    assert isinstance(autotune.compiled(model, "on"), torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize("cpu_bf16, expected", [("1", "bf16"), ("0", "fp32")])
def test_auto_precision_follows_the_cpu_untimed_and_is_logged(store, monkeypatch, cpu_bf16, expected):
    monkeypatch.setenv(runtime.CPU_BF16, cpu_bf16)
    monkeypatch.setattr(autotune, "_measure", _never)
    run = mlflow.get_run(train_teacher(tiny_train(epochs=1), tiny_unet(), tiny_diffusion()))
    params = run.data.params
    assert params["precision"] == "auto" and params["resolved.precision"] == expected
    assert params["compile"] == "auto" and params["resolved.compile"] == "off"
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{tuning.ARTIFACT}"))
    assert logged["precision"] == expected and logged["reason"] == "the only candidate on cpu"
    assert [c["name"] for c in logged["candidates"]] == [f"{expected}+compile"]  # not tried, and why


def test_forced_bf16_run_is_obeyed_untimed_and_a_resume_keeps_the_runs_choice(store, monkeypatch):
    monkeypatch.setattr(autotune, "_measure", _never)
    run = mlflow.get_run(train_teacher(tiny_train(epochs=1, precision="bf16"), tiny_unet(), tiny_diffusion()))
    assert run.data.params["resolved.precision"] == "bf16" and run.data.params["resolved.compile"] == "off"
    assert not any(k.startswith("autotune.") for k in run.data.metrics)
    model, objective, batch = _model_objective_batch()
    train, kept = tuning.tune_for_run(tiny_train(), model, objective, batch, CPU, resume=run.info.run_id)
    assert (train.precision, train.compile, kept.reason) == ("bf16", "off", "kept from the run being resumed")


def test_students_in_one_loop_train_alike_measured_once(study, teacher_run_id, monkeypatch):
    from dmat.stages.distill import train_students

    _two_candidates(monkeypatch)
    outcomes = train_students(tiny_train(epochs=1), [0.5, 0.3], teacher_run_id, "autotune-loop", student_steps=4)
    runs = [mlflow.get_run(o.run_id) for o in outcomes]
    assert runs[0].data.params["resolved.precision"] == runs[1].data.params["resolved.precision"]
    assert "autotune.fp32.step_seconds" in runs[0].data.metrics  # the first measured, the loop's choice
    assert not any(k.startswith("autotune.") for k in runs[1].data.metrics)  # the rest take it
