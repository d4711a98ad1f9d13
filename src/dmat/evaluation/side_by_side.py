"""Cost figures that are compared across models, measured side by side: one process, interleaved, warmed up.

Each evaluation also times its own model, but at whatever load the machine had at that moment, so two models
evaluated an hour apart on a shared machine are not comparable (on one busy run the 1.0 student, which is the
teacher's exact architecture, timed 30% slower than the teacher). Here every teacher and student of an
experiment is loaded at once, warmed up, and timed round-robin (each repeat visits every model once, in a
rotated order), at batch 1 (latency) and at a large batch (throughput); each model's median is kept. The unit
is one denoising step, one network forward: a sample with S sampling steps costs S of them. The table is
logged as a `cost` run's `cost/side_by_side.json`, which the report reads.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict

import mlflow
import torch

from dmat import tracking
from dmat.config import CostConfig
from dmat.errors import DmatError
from dmat.evaluation.timing import timed
from dmat.model.flops import flops_per_forward
from dmat.runtime import autocast, resolve_device, resolve_precision

WARMUP = 2


def _describe(loaded: tracking.LoadedModel) -> dict:
    tags = loaded.tags
    return {"run_id": loaded.run_id, "role": loaded.role, "size_factor": float(tags.get(tracking.SIZE_FACTOR, 1.0)),
            "method": tags.get(tracking.METHOD, ""), "init": tags.get(tracking.INIT, ""),
            "seed": int(float(loaded.params.get("seed", 0))), "image_size": loaded.model.config.image_size,
            "num_parameters": loaded.model.num_parameters, "flops_per_forward": flops_per_forward(loaded.model)}


def time_side_by_side(models: list[torch.nn.Module], batch: int, repeats: int, device: torch.device,
                      precision: str) -> list[float]:
    """Median seconds of one forward pass of each model at `batch`, all timed in interleaved rounds."""
    inputs = [(torch.randn(batch, m.config.in_channels, m.config.image_size, m.config.image_size, device=device),
               torch.zeros(batch, dtype=torch.long, device=device)) for m in models]
    seconds: list[list[float]] = [[] for _ in models]
    with torch.inference_mode(), autocast(device, precision):
        for round_ in range(WARMUP + repeats):
            order = [(round_ + i) % len(models) for i in range(len(models))]  # no model is always first
            for i in order:
                _, s = timed(lambda: models[i](*inputs[i]), device)
                if round_ >= WARMUP:
                    seconds[i].append(s)
    return [statistics.median(s) for s in seconds]


def measure(loaded: list[tracking.LoadedModel], cfg: CostConfig, device: torch.device, precision: str) -> list[dict]:
    """One row per model and batch size: ms per forward, images per second through one forward."""
    described = [_describe(m) for m in loaded]  # FLOPs are counted once per model, not per batch size
    rows = []
    for batch in cfg.batch_sizes:
        medians = time_side_by_side([m.model for m in loaded], batch, cfg.repeats, device, precision)
        rows += [{**d, "batch_size": batch, "ms_per_forward": 1000 * s, "images_per_s": batch / s}
                 for d, s in zip(described, medians)]
    return rows


def run_cost(config: CostConfig | None = None, experiment: str | None = None) -> str:
    """Time every FINISHED teacher and student of the experiment side by side, as a `cost` run; its id."""
    cfg = (config or CostConfig()).validate()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    tracking.check_writable(experiment)
    name = tracking.experiment_name(experiment)
    found = mlflow.get_experiment_by_name(name)
    runs = tracking.find_runs(None, experiment_ids=[found.experiment_id]) if found else []
    ids = [r.info.run_id for r in runs if r.data.tags.get(tracking.ROLE) in tracking.MODEL_ROLES]
    if not ids:
        raise DmatError(f"no finished teacher or student in experiment {name}: train some first (make pipeline)")
    loaded = [tracking.load_model(run_id, device=device) for run_id in ids]
    with tracking.tracked_run("cost-side-by-side", {tracking.ROLE: tracking.COST}, experiment) as run:
        tracking.log_params({**asdict(cfg), "resolved.precision": precision, "device": str(device),
                             "threads": torch.get_num_threads(), "models": len(loaded)})
        mlflow.log_dict({"rows": measure(loaded, cfg, device, precision)}, tracking.SIDE_BY_SIDE_TABLE)
        return run.info.run_id
