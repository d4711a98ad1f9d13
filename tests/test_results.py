"""Published results (report/results.py, `make results`): results/<name>/ from a study's store, and the README's
Results block equal to it, number for number."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from synthetic_study import log_synthetic_study

from dmat import tracking
from dmat.errors import DmatError
from dmat.report.results import export_results, read_markdown_table, readme_block

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p for p in (ROOT / "results").glob("*") if (p / "results.md").exists())


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.fillna("nan").astype(str).reset_index(drop=True)


def _finished_pipeline(experiment: str) -> str:
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id,
                            tags={tracking.ROLE: tracking.PIPELINE, tracking.GIT_COMMIT: "abc123"})
    client.log_param(run.info.run_id, "preset", "full")
    client.log_param(run.info.run_id, "dataset", "/data/digits")
    for label, seconds in (("teacher", 300.0), ("students_distill", 900.0)):
        client.log_metric(run.info.run_id, f"seconds_{label}", seconds)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_finished_study_is_published_with_its_report_tables_study_card_and_readme_block(store, tmp_path):
    log_synthetic_study("syn", sizes=(0.2, 0.5), methods=("distill",), seeds=(0, 1), artifacts=False, problems=False)
    run_id = _finished_pipeline("syn")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:digits -->\nold\n<!-- /results:digits -->\nafter\n")
    out = export_results("syn", tmp_path / "results" / "digits", readme)
    assert {"report.html", "results.csv", "results.md", "STUDY.md"} <= {p.name for p in out.iterdir()}
    assert (out / "tables" / "summary.csv").exists() and list((out / "figures").glob("*.png"))
    study = (out / "STUDY.md").read_text()
    assert run_id in study and "abc123 (1 runs)" in study and "| students_distill | 900 |" in study
    assert "cores" in study and "bf16" in study  # the machine, in words
    block = readme_block(readme.read_text(), "digits")
    assert block == (out / "results.md").read_text() and readme.read_text().endswith("after\n")
    shown = read_markdown_table(block)
    assert len(shown.columns) <= 8
    pd.testing.assert_frame_equal(_as_strings(shown), _as_strings(pd.read_csv(out / "results.csv", dtype=str)))


def test_a_study_without_a_finished_pipeline_is_one_line(store, tmp_path):
    log_synthetic_study("syn", sizes=(0.2,), methods=("distill",), artifacts=False, problems=False)
    with pytest.raises(DmatError, match="no finished pipeline run: run or resume the study first"):
        export_results("syn", tmp_path / "out")
    with pytest.raises(DmatError, match="no experiment 'nothing'"):
        export_results("nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_the_readme_shows_each_published_result_as_its_files_hold_it(folder):
    block = readme_block((ROOT / "README.md").read_text(encoding="utf-8"), folder.name)
    assert block == (folder / "results.md").read_text(encoding="utf-8"), f"make results DATASET={folder.name} again"
    pd.testing.assert_frame_equal(_as_strings(read_markdown_table(block)),
                                  _as_strings(pd.read_csv(folder / "results.csv", dtype=str)))
    assert (folder / "report.html").exists() and (folder / "STUDY.md").exists()
