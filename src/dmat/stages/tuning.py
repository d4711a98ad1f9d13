"""--precision and --compile for one training run: precision `auto` decided by the hardware
(runtime.resolve_precision: reproducible, never a timing), compile `auto` measured on the run's own model and
first batch (dmat.training.autotune), the same choice on every process, kept by a resumed run, logged with the run:
params `resolved.precision` and `resolved.compile`, metrics `autotune.<candidate>.step_seconds` and the
whole measurement as the artifact `autotune.json`."""

from __future__ import annotations

import dataclasses
import logging

import mlflow
import torch

from dmat import distributed
from dmat.config import TrainConfig
from dmat.runtime import resolve_precision
from dmat.training import autotune

log = logging.getLogger(__name__)
ARTIFACT = "autotune.json"


def tune_for_run(train: TrainConfig, model: torch.nn.Module, criterion, batch: torch.Tensor, device: torch.device,
                 resume: str | None = None) -> tuple[TrainConfig, autotune.Tuning]:
    """`train` with its precision and compile resolved ("fp32"/"bf16", "on"/"off"), and how they were chosen.
    A resumed run keeps what it trained with, so its epochs continue as they began."""
    tuning = _kept(resume) if resume else None
    precision = resolve_precision(train.precision, device)
    if tuning is None:
        tuning = autotune.forced(precision, train.compile, device)
    if tuning is None:
        tuning = distributed.from_main(autotune.tune(model, criterion, batch, device, precision, train.compile))
        timed = ", ".join(f"{c.name} {c.step_seconds * 1000:.0f} ms" for c in tuning.candidates if c.error is None)
        log.info(f"autotune: {tuning.precision}, compile {tuning.compile} ({tuning.reason}; per step: {timed}; "
                 f"tuning took {tuning.seconds:.1f} s)")
    return dataclasses.replace(train, precision=tuning.precision, compile=tuning.compile), tuning


def _kept(run_id: str) -> autotune.Tuning | None:
    """What the run being resumed trained with (a run from before --compile existed trained eager)."""
    params = mlflow.get_run(run_id).data.params
    precision = params.get("resolved.precision", params.get("precision"))
    if precision not in ("fp32", "bf16"):
        return None
    return autotune.Tuning(precision, params.get("resolved.compile", "off"), "kept from the run being resumed")


def log_tuning(tuning: autotune.Tuning | None, run_id: str) -> None:
    """The candidates' step times as metrics and the whole measurement as `autotune.json` (with the candidates
    not tried, and why), when `auto` had candidates to consider."""
    if tuning is None or not tuning.candidates:
        return
    if tuning.metrics():
        mlflow.log_metrics(tuning.metrics(), run_id=run_id)
    mlflow.log_dict(tuning.as_dict(), ARTIFACT, run_id=run_id)
