"""Cost of `make students`: parameters, FLOPs and training wall time per size factor.

    .venv/bin/python bench/bench_students.py            # estimate from a few timed steps per size
    .venv/bin/python bench/bench_students.py --train    # train them for real (the `make students` defaults)
    .venv/bin/python bench/bench_students.py --compare-shared [--sizes "0.2 0.5" --epochs 2]

Without --train it times (on the CPU) `--steps` distillation steps per size (student forward and backward, frozen
teacher forward, AdamW) on the default architecture and data, plus the validation and sample-grid
forwards, and extrapolates to `--epochs` (an upper bound: early stopping may end sooner). With
--train it runs `dmat.stages.distill.train_students` against the latest teacher (or --teacher-run-id) and
reports each run's real wall time. With --compare-shared it trains the sizes twice in this one process,
one by one and then in one loop that runs the teacher once per batch for all of them (`dmat students
--shared-teacher false|true`), and prints both wall times and their ratio. Prints a markdown table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from dmat import tracking
from dmat.config import STUDENT_TRAIN, DistillConfig, parse_sizes, with_overrides
from dmat.data import load_splits
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.flops import flops_per_forward
from dmat.model.unet import UNet, UNetConfig
from dmat.stages.distill import train_students
from dmat.training.distillation import DistillLoss


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def estimate(size: float, teacher: UNet, diffusion: GaussianDiffusion, splits, cfg, steps: int) -> dict:
    """Seconds one student of this size would train for, from timed steps."""
    student = UNet(with_overrides(teacher.config, size_factor=size))
    objective = DistillLoss(diffusion, DistillConfig(size_factor=size), teacher, student.feature_channels)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr)
    x0 = torch.stack([splits.train[i] for i in range(cfg.batch_size)])

    def train_step():
        loss, _ = objective.loss(student.train(), x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = timed(train_step, steps)
    with torch.no_grad():
        val_s = timed(lambda: objective.loss(student.eval(), x0), steps)
        noise = torch.randn(cfg.num_sample_images, *x0.shape[1:])
        t = torch.zeros(cfg.num_sample_images, dtype=torch.long)
        sample_s = timed(lambda: student(noise, t), steps) * cfg.sample_steps
    epoch_s = math.ceil(len(splits.train) / cfg.batch_size) * step_s + math.ceil(len(splits.val) / cfg.batch_size) * val_s
    return {"size_factor": size, "parameters": student.num_parameters, "flops_per_forward": flops_per_forward(student),
            "step_s": round(step_s, 4), "seconds": round(cfg.epochs * epoch_s + sample_s, 1)}


def measured(outcome) -> dict:
    row = {"size_factor": outcome.size_factor, "seconds": round(outcome.seconds, 1), "run_id": outcome.run_id}
    if outcome.run_id:
        metrics = tracking.get_run(outcome.run_id).data.metrics
        row.update(parameters=int(metrics["num_parameters"]), flops_per_forward=int(metrics["flops_per_forward"]),
                   epochs_run=int(metrics["epochs_run"]))
    else:
        row["error"] = outcome.error
    return row


def compare_shared(cfg, sizes: list[float], teacher_run_id: str | None, experiment: str | None,
                   student_steps: int) -> None:
    """Wall time of training `sizes` one by one and in one shared-teacher loop, both in this process and run
    (absolute times drift between runs and machines: the ratio is the figure)."""
    walls, failed = {}, []
    for shared in (False, True):
        start = time.perf_counter()
        outcomes = train_students(cfg, sizes, teacher_run_id, experiment, shared_teacher=shared,
                                  student_steps=student_steps)
        walls[shared] = time.perf_counter() - start
        failed += [f"{o.size_factor:g} ({'shared' if shared else 'one by one'}): {o.error}" for o in outcomes if o.error]
    ratio = walls[True] / walls[False]
    print("| students | wall seconds |\n|---|---|")
    print(f"| one by one | {walls[False]:.1f} |\n| one loop, shared teacher pass | {walls[True]:.1f} |")
    print(f"| ratio (shared / one by one) | {ratio:.3f} |")
    print(json.dumps({"bench": "students", "mode": "compare-shared", "sizes": sizes, "epochs": cfg.epochs,
                      "threads": torch.get_num_threads(), "one_by_one_seconds": round(walls[False], 1),
                      "shared_seconds": round(walls[True], 1), "ratio": round(ratio, 3), "failed": failed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="default: 0.2 0.4 0.5 0.6 0.8 1.0")
    parser.add_argument("--train", action="store_true", help="train the students for real instead of estimating")
    parser.add_argument("--compare-shared", action="store_true",
                        help="train the sizes one by one and then in one shared-teacher loop; print the wall-time ratio")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per size (estimate)")
    parser.add_argument("--teacher-run-id", default=None)
    parser.add_argument("--epochs", type=int, default=STUDENT_TRAIN.epochs)
    parser.add_argument("--batch-size", type=int, default=STUDENT_TRAIN.batch_size)
    parser.add_argument("--image-size", type=int, default=STUDENT_TRAIN.image_size)
    parser.add_argument("--sample-steps", type=int, default=STUDENT_TRAIN.sample_steps)
    parser.add_argument("--num-sample-images", type=int, default=STUDENT_TRAIN.num_sample_images)
    parser.add_argument("--student-steps", type=int, default=DistillConfig.student_steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--experiment", default=None)
    args = parser.parse_args()

    sizes = parse_sizes(args.sizes)
    cfg = with_overrides(STUDENT_TRAIN, epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                  sample_steps=args.sample_steps, num_sample_images=args.num_sample_images, device=args.device)
    if args.compare_shared:
        compare_shared(cfg, sizes, args.teacher_run_id, args.experiment, args.student_steps)
        return
    start = time.perf_counter()
    if args.train:
        outcomes = train_students(cfg, sizes, args.teacher_run_id, args.experiment, shared_teacher=False,
                                  student_steps=args.student_steps)
        rows = [measured(o) for o in outcomes]
    else:
        splits = load_splits(cfg)
        teacher = UNet(UNetConfig(image_size=splits.image_size, in_channels=splits.channels)).eval()
        diffusion = GaussianDiffusion(DiffusionConfig())
        rows = [estimate(s, teacher, diffusion, splits, cfg, args.steps) for s in sizes]
    total = sum(r["seconds"] for r in rows)

    print("| size_factor | parameters | FLOPs per forward | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['size_factor']:g} | {r.get('parameters', 'n/a')} | {r.get('flops_per_forward', 'n/a')} | {r['seconds']} |")
    print(f"| total | | | {total:.1f} |")
    print(json.dumps({"bench": "students", "mode": "train" if args.train else "estimate", "epochs": cfg.epochs,
                      "threads": torch.get_num_threads(), "total_seconds": round(total, 1),
                      "bench_wall_seconds": round(time.perf_counter() - start, 1), "sizes": rows}))


if __name__ == "__main__":
    main()
