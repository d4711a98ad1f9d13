"""Which evaluations are comparable (evaluation/pending.py): precision and the headline's feature space are part of
an evaluation's settings, and an evaluation that did not log them counts as what it was then."""

from __future__ import annotations

import pytest

from dmat import runtime
from dmat.config.evaluation import EvalConfig
from dmat.evaluation import floor, pending, spaces


def _params(**changed) -> dict:
    base = {"sampler": "ddim", "steps": "50", "num_samples": "2000", "features": "classifier", "seed": "0",
            "floor_draws": "10", "precision": "fp32", "headline_space": spaces.HEADLINE_SPACE,
            "floor_estimate": floor.ESTIMATE}
    return {k: str(v) for k, v in {**base, **changed}.items() if v is not None}


def test_precision_and_headline_space_join_the_comparability_key():
    assert {"precision", "headline_space"} <= set(pending.SETTINGS)
    fp32, bf16 = pending.settings_of(_params()), pending.settings_of(_params(precision="bf16"))
    assert fp32 != bf16  # bf16 sampling moves KID by about 0.3 floor-sd: not like with like
    assert pending.settings_of(_params(headline_space="classifier")) != fp32


def test_an_evaluation_whose_floor_was_its_own_10_draws_is_kept_apart_from_a_cached_100_draw_one():
    assert "floor_estimate" in pending.SETTINGS
    older = pending.settings_of(_params(floor_estimate=None))  # before the floor was cached: its own draws
    assert older != pending.settings_of(_params())
    assert older == pending.settings_of(_params(floor_estimate="the evaluation's floor_draws"))


def test_an_older_evaluation_counts_as_fp32_with_the_classifier_headline():
    old = pending.settings_of(_params(precision=None, headline_space=None))
    assert old == pending.settings_of(_params(headline_space="classifier"))
    assert old != pending.settings_of(_params())


@pytest.mark.parametrize("cpu_bf16, expected", [("0", "fp32"), ("1", "bf16")])
def test_the_wanted_settings_resolve_precision_as_the_evaluation_logs_it(monkeypatch, cpu_bf16, expected):
    monkeypatch.setenv(runtime.CPU_BF16, cpu_bf16)
    wanted = pending.wanted_settings(EvalConfig(device="cpu"), 50, {})  # a model that logged no precision
    assert wanted["precision"] == expected and wanted["headline_space"] == spaces.HEADLINE_SPACE
    assert pending.settings_of(wanted) == pending.settings_of(_params(precision=expected))


@pytest.mark.parametrize("cpu_bf16", ["0", "1"])
@pytest.mark.parametrize("trained", ["fp32", "bf16"])
def test_auto_samples_a_model_at_the_precision_it_trained_at_on_any_cpu(monkeypatch, cpu_bf16, trained):
    monkeypatch.setenv(runtime.CPU_BF16, cpu_bf16)
    model = {"precision": "auto", "resolved.precision": trained}  # as a run logs `auto` it settled on
    assert pending.wanted_settings(EvalConfig(device="cpu"), 50, model)["precision"] == trained
    assert pending.wanted_settings(EvalConfig(device="cpu", precision="fp32"), 50, model)["precision"] == "fp32"
    assert pending.wanted_settings(EvalConfig(device="cpu", precision="bf16"), 50, model)["precision"] == "bf16"
