"""Issue 30: no sentence of the report contradicts a number beside it. A report rendered from a synthetic store with a
`dmat cost` run shows one latency (the side-by-side forward pass x the steps) in the summary, the first screen, the time
section and the frontier; its seeds sentence agrees with the seeds column; the copy test's chance is the logged one;
and the speed sentences agree with the latencies in the tables."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from synthetic_study import IMAGE, STEPS, _evaluation_run, _model_run

from dmat import tracking
from dmat.report import build_report

SIZES = (1.0, 0.5, 0.25)
GRID = (5,)
CHANCE = 0.048  # the copy test's chance, k / (n + 1): not the 0.05 a sentence might assume
# ms per forward pass at batch 1, timed side by side: size 0.5 within 10% of size 1, size 0.25 faster than both (the
# issue's "0.25 ... 1.2x faster. Below size 1 a smaller student is no longer faster"); seeds timed apart
TEACHER_MS = 4.6
FORWARD_MS = {1.0: 4.4, 0.5: 4.1, 0.25: 3.8}


def _forward_ms(size: float, seed: int) -> float:
    return FORWARD_MS[size] + 0.04 * seed


def _store(seeds: tuple[int, ...], second_evaluation: bool) -> dict[tuple, str]:
    """A teacher and distilled students of SIZES x `seeds`, evaluated with a steps grid and the copy test (no alarm),
    their evaluations' own latencies far from the side-by-side ones, and a cost run timing every model; with
    `second_evaluation`, one student evaluated again with another evaluation seed (one training run, two
    evaluations). Returns the model run ids by (method, size, seed)."""
    client = MlflowClient()
    exp_id = client.create_experiment("syn")
    copy = {"copy_rate": 0.0, "copy_rate_chance": CHANCE, "copy_alarm": 0.0, "copy_p_value": 1.0}
    teacher = _model_run(client, exp_id, "teacher", "teacher", 1.0, 0)
    models = {("teacher", 1.0, 0): teacher}
    _evaluation_run(client, exp_id, teacher, teacher, "teacher", "teacher", 1.0, 0, artifacts=False, extra=copy,
                    steps_grid=GRID)
    for size in SIZES:
        for seed in seeds:
            models["distill", size, seed] = student = _model_run(client, exp_id, "student", "distill", size, seed)
            _evaluation_run(client, exp_id, student, teacher, "student", "distill", size, seed, artifacts=False,
                            extra=copy, steps_grid=GRID)
    if second_evaluation:
        _evaluation_run(client, exp_id, models["distill", 0.5, seeds[0]], teacher, "student", "distill", 0.5,
                        seeds[0] + 7, artifacts=False, extra=copy, steps_grid=GRID)
    rows = [{"run_id": run_id, "role": "teacher" if method == "teacher" else "student", "size_factor": size,
             "image_size": IMAGE, "flops_per_forward": 1e6 * size, "batch_size": batch,
             "ms_per_forward": (TEACHER_MS if method == "teacher" else _forward_ms(size, seed)) * (1 + (batch > 1))}
            for (method, size, seed), run_id in models.items() for batch in (1, 64)]
    run = client.create_run(exp_id, tags={tracking.ROLE: tracking.COST})
    client.log_dict(run.info.run_id, {"rows": rows}, tracking.SIDE_BY_SIDE_TABLE)
    client.set_terminated(run.info.run_id)
    return models


def _section(page: str, key: str) -> str:
    return page.split(f'<h2 id="{key}">')[1].split("<h2 ")[0]


def _tables(section: str) -> list[pd.DataFrame]:
    """Each HTML table of a section as strings, headers as shown."""
    def cells(row: str, tag: str) -> list[str]:
        return [html.unescape(c).strip() for c in re.findall(rf"<{tag}(?: [^>]*)?>(.*?)</{tag}>", row, flags=re.S)]

    tables = []
    for table in re.findall(r"<table>(.*?)</table>", section, flags=re.S):
        head, body = table.split("</thead>")
        rows = [cells(row, "td") for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)]
        tables.append(pd.DataFrame(rows, columns=cells(head, "th")))
    return tables


def _number(cell: str) -> float:
    """The mean of a "mean ± half-width" cell."""
    return float(cell.split("±")[0].replace("*", ""))


def _model(method: str, size) -> str:
    """A model as the first screen names it."""
    return "teacher" if method == "teacher" else f"distill, random init, size {float(size):g}"


def _latencies(shown: pd.DataFrame) -> dict[str, float]:
    """A shown table's latency per model."""
    return dict(zip(map(_model, shown.Method, shown.Size), map(_number, shown["Latency per image (ms) ↓"])))


def _items(section: str) -> list[str]:
    return [html.unescape(re.sub(r"\s+", " ", item)).strip() for item in re.findall(r"<li>(.*?)</li>", section, re.S)]


@pytest.mark.parametrize("seeds", [(0, 1), (0,)], ids=["two seeds", "one seed"])
def test_a_report_with_a_cost_run_contradicts_none_of_its_numbers(store, tmp_path, seeds):
    _store(seeds, second_evaluation=len(seeds) == 1)
    out = tmp_path / "out"
    page = build_report("syn", sections=("answer", "summary", "efficiency", "frontier", "time", "findings"),
                        out_dir=out, log_run=False).read_text()

    # one latency: each model's side-by-side forward pass x its STEPS, the interval over its seeds' own timings
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("size_factor")
    teacher = summary[summary.method == "teacher"].iloc[0]
    students = summary[summary.method == "distill"]
    assert teacher.latency_ms_per_image == pytest.approx(TEACHER_MS * STEPS)
    for size, row in students.iterrows():
        per_seed = [_forward_ms(size, seed) * STEPS for seed in seeds]
        assert row.latency_ms_per_image == pytest.approx(np.mean(per_seed))  # not the evaluation's own 1 + 4 x size
        if len(seeds) > 1:
            half = stats.t.ppf(0.975, len(seeds) - 1) * np.std(per_seed, ddof=1) / np.sqrt(len(seeds))
            assert row.latency_ms_per_image_ci95 == pytest.approx(half)
    expected = {_model(method, size): ms for method, size, ms in zip(summary.method, summary.index,
                                                                       summary.latency_ms_per_image)}

    label = f"ms / image, batch 1, {STEPS} steps, timed side by side"
    first = _tables(_section(page, "answer"))[0].set_index("model")
    assert {model: _number(first.loc[model, f"latency ({label})"]) for model in expected} == pytest.approx(
        expected, abs=0.05)  # one decimal shown
    assert f"Latency per image: {label}, as everywhere in this report" in _section(page, "summary")
    for shown in (_tables(_section(page, "summary"))[0], _tables(_section(page, "time"))[-1]):
        assert _latencies(shown) == pytest.approx(expected, rel=1e-2)  # three significant figures shown

    # the frontier: each model's latency at its own steps as in the summary, and at the grid's steps the same forward
    points = pd.read_csv(out / "tables" / "frontier.csv")
    for row in points.itertuples():
        per_step = expected[_model(row.method, row.size_factor)] / STEPS
        assert row.latency_ms_per_image == pytest.approx(per_step * row.steps)
    front = _tables(_section(page, "frontier"))[0]
    at_steps = _latencies(front[front["Sampling steps"].astype(float) == STEPS])
    assert at_steps and at_steps == pytest.approx({model: expected[model] for model in at_steps}, rel=1e-2)

    # the speed sentences: "x faster" is the tables' teacher latency over the size's, and where a floor is stated, no
    # smaller size is more than 10% faster than it
    speed = next(line for line in _items(_section(page, "efficiency")) if line.startswith("At batch 1,"))
    said = {float(size): float(ratio) for size, ratio in re.findall(r"([\d.]+): [\d.]+x fewer FLOPs, ([\d.]+)x faster",
                                                                    speed)}
    assert said == pytest.approx({size: teacher.latency_ms_per_image / row.latency_ms_per_image
                                  for size, row in students.iterrows()}, abs=0.05)
    floors = re.findall(r"Below size ([\d.]+) no smaller student is more than 10% faster than size \1", speed)
    assert floors == ["0.5"]  # size 0.25 is still more than 10% faster than size 1: no floor at 1
    floor = students.latency_ms_per_image[float(floors[0])]
    assert (students.latency_ms_per_image[students.index < float(floors[0])] > 0.9 * floor).all()
    assert "no longer faster" not in page

    # seeds: the sentence counts training runs as the seeds column does, and names seed values, not a count
    findings = " ".join(_items(_section(page, "findings")))
    if len(seeds) > 1:
        low, high = map(int, re.search(r"Seeds: (\d+) to (\d+) runs per size and method", findings).groups())
        assert (low, high) == (students.seeds.min(), students.seeds.max()) == (2, 2)
        assert "(training seeds 0, 1)" in findings
    else:
        assert set(students.seeds) == {1} and students.n.max() == 2  # size 0.5 evaluated twice: still one run
        assert "One run per size and method (training seed 0): no interval over seeds" in findings
        assert "Seeds: " not in findings
    assert not re.search(r"seeds: \d", page)  # "(student seeds: 0)" beside a seeds column of 1

    # the copy test's chance as logged, never another
    memorised = next(line for line in _items(_section(page, "findings")) if line.startswith("No evaluation shows"))
    assert re.findall(r"the copy test's rate by chance: ([\d.]+)", memorised) == [f"{CHANCE:.2g}"]
    assert re.findall(r"([\d.]+) by chance", memorised) == ["0.01"]  # the raw rates', said to be theirs
    assert "0.01 by chance for these" in memorised
