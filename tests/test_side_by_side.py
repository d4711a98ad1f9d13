"""`dmat cost`: every model of a study timed in one process, interleaved, and what the report says of it."""

from __future__ import annotations

import mlflow
from click.testing import CliRunner
from conftest import tiny_train

from dmat import tracking
from dmat.cli.main import cli
from dmat.report import build_report
from dmat.report.speed import speed_sentences
from dmat.stages.distill import train_student


def _row(role, size, flops, ms, batch=1, seed=0):
    return {"role": role, "size_factor": size, "flops_per_forward": flops, "ms_per_forward": ms, "batch_size": batch,
            "seed": seed}


def test_every_model_is_timed_at_every_batch_size_in_one_cost_run(study, teacher_run_id, tmp_path):
    train_student(tiny_train(epochs=1), 0.5, teacher_run_id, student_steps=4)
    result = CliRunner().invoke(cli, ["cost", "--batch-sizes", "1,8", "--repeats", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split()[-1]
    run = mlflow.get_run(run_id)
    assert run.data.tags[tracking.ROLE] == tracking.COST
    assert run.data.params["resolved.precision"] in ("fp32", "bf16")
    rows = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{tracking.SIDE_BY_SIDE_TABLE}")["rows"]
    runs = tracking.find_runs(None, experiment_ids=[run.info.experiment_id])  # the experiment's own models, only
    models = {r.info.run_id for r in runs if r.data.tags[tracking.ROLE] in tracking.MODEL_ROLES}
    assert {(r["run_id"], r["batch_size"]) for r in rows} == {(m, b) for m in models for b in (1, 8)}
    for r in rows:
        assert r["ms_per_forward"] > 0 and abs(r["images_per_s"] - r["batch_size"] * 1000 / r["ms_per_forward"]) < 1e-6
        assert r["flops_per_forward"] == mlflow.get_run(r["run_id"]).data.metrics["flops_per_forward"]
    # the report's efficiency section says what these timings show
    html = build_report(out_dir=tmp_path / "report", sections=("efficiency",)).read_text()
    assert "Speed against size, from the newest `dmat cost` run" in html and "At batch 1, against the teacher" in html


def test_no_models_is_one_clear_error(store):
    result = CliRunner().invoke(cli, ["cost", "--device", "cpu"])
    assert result.exit_code != 0 and "no finished teacher or student in experiment" in result.output


def test_the_sentences_say_how_much_faster_each_size_is_and_where_smaller_stops_paying():
    assert speed_sentences([_row("teacher", 1.0, 100.0, 10.0)]) == []  # no student: nothing to compare
    rows = [_row("teacher", 1.0, 100.0, 10.0), _row("student", 0.5, 25.0, 4.0), _row("student", 0.5, 25.0, 4.4, seed=1),
            _row("student", 0.2, 4.0, 3.9), _row("teacher", 1.0, 100.0, 40.0, batch=64),
            _row("student", 0.5, 25.0, 10.0, batch=64), _row("student", 0.2, 4.0, 2.0, batch=64)]
    assert speed_sentences(rows) == [
        "At batch 1, against the teacher: 0.5: 4.0x fewer FLOPs, 2.4x faster; 0.2: 25.0x fewer FLOPs, 2.6x faster. "
        "Below size 0.5 no smaller student is more than 10% faster than size 0.5: fixed costs dominate.",
        "At batch 64, against the teacher: 0.5: 4.0x fewer FLOPs, 4.0x faster; 0.2: 25.0x fewer FLOPs, 20.0x faster."]
