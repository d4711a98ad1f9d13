"""One precision per study: `auto` decided by the hardware once, part of a student's identity, and models trained or
sampled at another precision kept apart in the report (never averaged as seeds of one model)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import tiny_train

from dmat import runtime
from dmat.config import DistillConfig, PipelineConfig
from dmat.report import study_kind
from dmat.report.query import tidy_runs, with_model
from dmat.report.tables import summary_table
from dmat.stages.resume import settings_key
from dmat.study.pipeline import one_precision


@pytest.mark.parametrize("cpu_bf16, expected", [("0", "fp32"), ("1", "bf16")])
def test_a_study_decides_auto_once_and_passes_the_precision_to_every_stage(monkeypatch, cpu_bf16, expected):
    monkeypatch.setenv(runtime.CPU_BF16, cpu_bf16)
    assert one_precision(PipelineConfig(device="cpu")).precision == expected
    assert one_precision(PipelineConfig(device="cpu", precision="fp32")).precision == "fp32"


def test_a_students_identity_holds_its_resolved_precision(monkeypatch):
    config = DistillConfig(size_factor=0.5)
    keys = {}
    for cpu_bf16 in ("0", "1"):
        monkeypatch.setenv(runtime.CPU_BF16, cpu_bf16)
        keys[cpu_bf16] = settings_key(tiny_train(precision="auto"), config, "teacher")
    assert keys["0"] != keys["1"]  # the same command on another kind of CPU is another student
    assert keys["1"] == settings_key(tiny_train(precision="bf16"), config, "teacher")  # auto is what it resolved to


def _searched(rows: list[dict]) -> pd.DataFrame:
    """Runs as mlflow.search_runs returns them (columns `tags.*`, `params.*`, `metrics.*`)."""
    return pd.DataFrame([{"status": "FINISHED", "start_time": i, **row} for i, row in enumerate(rows)])


def test_evaluations_sampled_at_two_precisions_are_two_rows_not_two_seeds():
    student = {"run_id": "s", "tags.dmat.role": "student", "tags.dmat.method": "distill", "tags.dmat.size_factor": "0.5",
               "params.seed": "0", "params.precision": "auto", "params.resolved.precision": "bf16"}
    evaluation = {"tags.dmat.role": "evaluation", "tags.dmat.method": "distill", "tags.dmat.size_factor": "0.5",
                  "tags.dmat.model_run_id": "s"}
    runs = tidy_runs(_searched([student, {**evaluation, "run_id": "e1", "params.seed": "0", "params.precision": "fp32",
                                          "metrics.kid": 0.01},
                                {**evaluation, "run_id": "e2", "params.seed": "1", "params.precision": "bf16",
                                 "metrics.kid": 0.03}]))
    models, evaluations = runs[runs.role == "student"], runs[runs.role == "evaluation"]
    assert models.train_precision.tolist() == ["bf16"]
    evaluations = with_model(evaluations, models)
    table = summary_table(evaluations)
    assert table.n.tolist() == [1, 1] and sorted(table.kid) == [0.01, 0.03]  # not one row of n = 2
    assert set(table.sampling_precision) == {"fp32", "bf16"} and set(table.train_precision) == {"bf16"}
    assert "precision" not in table.columns or table.precision.isna().all()  # the metric keeps its own name
    said = study_kind.mixed_precisions(models, evaluations)
    assert said == ["Models were sampled at more than one precision (bf16 and fp32): each precision is its own row, "
                    "and a comparison across them is one of precision as much as of size."]
    assert study_kind.mixed_precisions(models, evaluations[evaluations.run_id == "e1"]) == []
