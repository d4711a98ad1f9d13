"""Bench: were a finished study's models converged where it matters, in their KID? (issue 28's false-stop check)

The slope test (training/convergence.py) reads the validation loss, and under a cosine decay every run's last epochs
fall as the learning rate anneals, so it flags models at their caps as still improving. The question the answer needs
is another: would more training change the scores? Here the teacher and the main line's students at the given sizes
(seed 0) are trained again with their own reproduce commands at 50% more epochs (the same recipe, so the cosine
decay is stretched over the longer cap), into the experiment `convergence-check`; each original and each longer model
is then evaluated there with the study's evaluation settings and one evaluation seed, so both see the same starting
noise and draws. Per model and feature space it prints both KIDs, the change in the original's floor sds, and whether
the longer model improved beyond the original's 95% interval as the study reports it (over its seeds for a student;
for the teacher, trained once, its draws' sd widened by the study's seed-to-draws ratio, never narrowed); then how
the smaller student's KID ratio to the teacher moved. With `--recipe`, each model is first trained with those options
at its own epochs (a student from the teacher so trained), and that is what its 50%-longer run is compared with: the
check of a recipe that would replace the study's (the intervals stay the study's own).

    MLFLOW_TRACKING_URI=sqlite:///$HOME/dmat-study/mlflow.db .venv/bin/python bench/bench_convergence_check.py \\
        study-digits --sizes 0.2 [--recipe "--lr 0.001 --lr-warmup-epochs 2"]

On the digits study of results/digits (lr 2e-4, cosine; 2-core Intel Xeon with AMX, bf16): the teacher's random-CNN
KID falls from 3.01e-3 at 100 epochs to 1.65e-3 at 150 (-21 floor-sd, -45%; classifier KID 0.258 -> 0.135), within
its one-run interval but far from converged for a 10% threshold; the size-0.2 student's from 0.134 at 30 epochs to
0.098 at 45 (-557 floor-sd, beyond its interval over 3 seeds); its ratio to the teacher rises from 44 to 59.
With `--recipe "--lr 0.001 --lr-warmup-epochs 2"` (the full preset's since): the teacher's random-CNN KID is 4.9e-4 at
100 epochs (6x lower than at 2e-4) and 3.2e-4 at 150 (-2.7 floor-sd; classifier KID -0.035 -> -0.045, inside its
floor, -0.0 floor-sd); the size-0.2 student's 0.1135 at 30 epochs and 0.1069 at 45 (-6%, still beyond the old
recipe's interval over seeds: the students' 30-epoch cap is not converged, the report says so). A teacher at its
floor makes the KID ratio ill-conditioned: 231x at 100 epochs, 335x at 150, and negative in the classifier space.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.config.study import FULL, MAIN_LINE
from dmat.evaluation.evaluate import evaluate_run
from dmat.report.answer import SeedSpread
from dmat.report.query import load_study
from dmat.report.tables import mean_ci

CHECK = "convergence-check"
MORE = 1.5  # the longer run's epoch cap, against the original's
SPACES = ("kid", "kid_classifier")


def retrain(run_id: str, share: float, recipe: list[str], teacher: str | None = None) -> str:
    """Train the run again from its own reproduce command at `share` x its epochs, with the `recipe` options (each
    replacing the command's own value) and, for a student, `teacher` as its teacher, into CHECK; the new run's id."""
    run = MlflowClient().get_run(run_id)
    command = shlex.split(run.data.tags[tracking.NOTE].split("Reproduce: `", 1)[1].split("`", 1)[0])
    options = {"--epochs": str(int(round(share * float(run.data.params["epochs"])))),
               "--seed": run.data.params["seed"], **dict(zip(recipe[::2], recipe[1::2]))}
    role = run.data.tags[tracking.ROLE]
    if teacher and role == tracking.STUDENT:
        options["--teacher-run-id"] = teacher
    for option, value in options.items():
        if option in command:
            command[command.index(option) + 1] = value
        else:
            command += [option, value]
    if done := _trained(role, dict(zip(command[2::2], command[3::2]))):  # a rerun of the bench reuses it
        return done
    before = {r.info.run_id for r in MlflowClient().search_runs([_check_id()])}
    subprocess.run([sys.executable, "-m", "dmat", *command[1:], "--experiment", CHECK], check=True)
    new = [r for r in MlflowClient().search_runs([_check_id()]) if r.info.run_id not in before
           and r.data.tags.get(tracking.ROLE) == role]
    return new[0].info.run_id


def _trained(role: str, options: dict[str, str]) -> str | None:
    """A finished run of CHECK trained with these command options (each param equal to its option's value)."""
    def same(a: str | None, b: str) -> bool:
        try:
            return a is not None and float(a) == float(b)
        except ValueError:
            return a == b
    for run in tracking.find_runs(role, experiment_ids=[_check_id()]):
        params = {**run.data.params, "teacher_run_id": run.data.tags.get(tracking.TEACHER_RUN_ID)}
        if all(same(tracking.param_value(params, option[2:].replace("-", "_")), value)
               for option, value in options.items()):
            return run.info.run_id
    return None


def _check_id() -> str:
    experiment = mlflow.get_experiment_by_name(CHECK)
    return experiment.experiment_id if experiment else mlflow.create_experiment(CHECK)


def scores(model_run_id: str, num_samples: int, steps: int) -> dict[str, float]:
    """The model's scores from its evaluation in CHECK at these settings (made now where there is none)."""
    done = [r for r in tracking.find_runs(tracking.EVALUATION, {tracking.MODEL_RUN_ID: model_run_id},
                                          experiment_ids=[_check_id()])
            if (r.data.params.get("num_samples"), r.data.params.get("steps")) == (str(num_samples), str(steps))]
    evaluation = done[0].info.run_id if done else evaluate_run(model_run_id, experiment=CHECK, num_samples=num_samples,
                                                               steps=str(steps), steps_grid=())
    return MlflowClient().get_run(evaluation).data.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--sizes", type=float, nargs="+", default=None, help="main-line sizes (default: smallest)")
    parser.add_argument("--num-samples", type=int, default=FULL["num_samples"], help="the study's (default: full's)")
    parser.add_argument("--steps", type=int, default=FULL["steps"], help="the study's (default: full's)")
    parser.add_argument("--recipe", default="", help="training options to try instead of the study's, e.g. "
                        "'--lr 0.001': each model is trained with them at its epochs and at 1.5x (students from the "
                        "teacher trained with them at its epochs)")
    args = parser.parse_args()
    study = load_study(args.experiment)
    evals = study.evaluations
    teacher = evals[evals.method == "teacher"]
    line = evals[(evals.method == MAIN_LINE[0]) & (evals.init == MAIN_LINE[1])]
    sizes = args.sizes or [float(line.size_factor.min())]
    settings = {"num_samples": args.num_samples, "steps": args.steps}
    checked = {"teacher": (teacher.model_run_id.iloc[0], teacher)}
    for size in sizes:
        runs = line[line.size_factor == size]
        checked[f"size {size:g}"] = (runs[runs.model_seed.astype(float) == 0].model_run_id.iloc[0], runs)
    recipe = shlex.split(args.recipe)
    results, teacher_now = {}, None
    for name, (run_id, runs) in checked.items():
        now = retrain(run_id, 1.0, recipe, teacher_now) if recipe else run_id  # the recipe at the study's epochs
        teacher_now = teacher_now or now
        original, extended = scores(now, **settings), scores(retrain(run_id, MORE, recipe, teacher_now), **settings)
        results[name] = (original, extended)
        for space in SPACES:
            if len(runs) > 1:
                _, half = mean_ci(runs[space])
            else:
                spread = SeedSpread.of(evals, space)
                half = 1.96 * float(runs[f"{space}_sd"].iloc[0]) * max(1.0, spread.ratio if spread else 1.0)
            change = extended[space] - original[space]
            print(f"{name} {space}: {original[space]:.4g} -> {extended[space]:.4g} at {MORE:g}x the epochs "
                  f"({change / original[f'{space}_floor_sd']:+.1f} floor-sd; its 95% half-width {half:.3g}): "
                  f"improved beyond its interval: {bool(-change > half)}")
    for name in list(results)[1:]:
        for space in SPACES:
            before, after = (results[name][i][space] / results["teacher"][i][space] for i in (0, 1))
            print(f"{name} / teacher {space}: {before:.3g} -> {after:.3g} ({np.log(after / before):+.2f} in log)")


if __name__ == "__main__":
    main()
