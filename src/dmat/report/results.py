"""A study's published results (`make results`): results/<name>/ in the repository holds the report (report.html,
figures/, tables/*.csv), `results.csv` and `results.md` (the first screen's answer and paper-style table, as the
README's Results section shows them) and STUDY.md (the command, the commit, the machine, the wall time per stage and
in total, the pipeline's run id). Small files only: no checkpoint, no tracking store.

The README shows each data set's results.md between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; the export
rewrites that block, and tests/test_results.py checks the two agree, number for number.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.errors import DmatError
from dmat.report.build import build_report
from dmat.report.first_screen import headline, results_table
from dmat.report.query import load_study
from dmat.report.sections import gather_inputs
from dmat.runtime import cpu_has_bf16

MARKERS = ("<!-- results:{} -->", "<!-- /results:{} -->")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of `frame`'s cells as they are (strings)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def read_markdown_table(text: str) -> pd.DataFrame:
    """The first markdown table in `text`, as strings (markdown_table's inverse)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows]
    return pd.DataFrame(cells[2:], columns=cells[0])


def _machine(pipeline) -> str:
    """This machine in words, where it is the one the pipeline ran on (its host tag); else what is known."""
    host = pipeline.data.tags.get(tracking.OWNER_HOST)
    if host and host != socket.gethostname():
        return f"host {host} (not this one: its CPU is not known here)"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "CPU model unknown (no lscpu)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0))
    return f"{model}, {cores} cores, {'native bf16 (AVX512-BF16/AMX)' if cpu_has_bf16() else 'no native bf16'}; {gpu}"


def _commits(pipeline) -> str:
    """The git commits the study's stages ran at (MLflow's tag on each project run), most runs first."""
    runs = MlflowClient().search_runs([pipeline.info.experiment_id], max_results=5000)
    found = pd.Series([r.data.tags.get(tracking.GIT_COMMIT) for r in runs]).dropna().value_counts()
    return ", ".join(f"{commit} ({n} runs)" for commit, n in found.items()) or "unknown (no stage ran as a project run)"


def _study_md(name: str, pipeline, headline_text: str) -> str:
    info, params = pipeline.info, pipeline.data.params
    stages = sorted(((k[len("seconds_"):], v) for k, v in pipeline.data.metrics.items() if k.startswith("seconds_")),
                    key=lambda kv: -kv[1])
    total = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
    started = datetime.fromtimestamp(info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    options = " ".join(f"--{k.replace('_', '-')} {v!r}" if " " in v else f"--{k.replace('_', '-')} {v}"
                       for k, v in sorted(params.items()) if k in ("preset", "precision"))
    lines = [f"# The {name} study", "", headline_text, "",
             f"- command: `make results DATASET={params.get('dataset', name).rsplit('/', 1)[-1]}` "
             f"(the study: `dmat pipeline {options} --dataset {params.get('dataset', '?')}`)",
             f"- commit: {_commits(pipeline)}",
             f"- machine: {_machine(pipeline)}",
             f"- started {started}; wall time {total / 60:.1f} min in total (status {info.status})",
             f"- pipeline run: {info.run_id} (experiment {pipeline.info.experiment_id})", "",
             "## Wall time per stage (s; students of one loop share its time; stages ran two at once)", "",
             "| stage | seconds |", "|---|---|", *(f"| {label} | {seconds:.0f} |" for label, seconds in stages), "",
             "## The study's settings (the pipeline run's params)", "",
             *(f"- {k}: {v}" for k, v in sorted(params.items()))]
    return "\n".join(lines) + "\n"


def export_results(experiment: str, out: Path, readme: Path | None = None) -> Path:
    """Write results/<name>/ from the experiment's newest finished pipeline and its runs; rewrite the README's block
    for it where the README has its markers. Returns the folder."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise DmatError(f"no experiment {experiment!r} in {tracking.tracking_uri()}: run the study first "
                        "(make results DATASET=...)")
    pipelines = tracking.find_runs(tracking.PIPELINE, status="FINISHED", max_results=1,
                                   experiment_ids=[found.experiment_id])
    if not pipelines:
        raise DmatError(f"experiment {experiment!r} has no finished pipeline run: run or resume the study first")
    out.mkdir(parents=True, exist_ok=True)
    build_report(experiment, out_dir=out, log_run=False)
    first_screen = gather_inputs(load_study(experiment), ("answer",), full_mse=False)  # with the report's one latency
    sentence = headline(first_screen.evals)
    table = results_table(first_screen.table, first_screen.evals, first_screen.latency)
    table.to_csv(out / "results.csv", index=False)
    name = out.name
    block = f"**{name}**: {sentence}\n\n{markdown_table(table)}\n"
    (out / "results.md").write_text(block, encoding="utf-8")
    (out / "STUDY.md").write_text(_study_md(name, pipelines[0], sentence), encoding="utf-8")
    if readme is not None and readme.exists():
        update_readme(readme, name, block)
    return out


def update_readme(readme: Path, name: str, block: str) -> bool:
    """Replace the README's block for `name` (between its markers) with `block`; False where it has no markers."""
    start, end = (m.format(name) for m in MARKERS)
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{block}{end}{rest.split(end, 1)[1]}", encoding="utf-8")
    return True


def readme_block(readme_text: str, name: str) -> str | None:
    """The README's block for `name`, as update_readme wrote it (None: no markers)."""
    start, end = (m.format(name) for m in MARKERS)
    if start not in readme_text:
        return None
    return readme_text.split(start, 1)[1].split(end, 1)[0].removeprefix("\n")
