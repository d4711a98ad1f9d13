"""Train one model, teacher or student, as one MLflow run: the entry point both share.

The sequence is the same for every model: validate, choose the device, check the tracking store,
let the caller plan the model (a student loads its teacher here), load the data, seed, build the
network, check a resumed run's checkpoint, run one batch forward and backward (halving it until it
fits in memory); only then is the MLflow run created, so bad input never leaves a run behind.
`training.fit` trains with an `MlflowRecorder`; the sample grid ends the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from dmat import distributed, tracking
from dmat.config import TrainConfig, flat_params
from dmat.data import DataSplits, load_splits
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion, sample_from_seed
from dmat.model.flops import flops_per_forward
from dmat.model.unet import UNet, UNetConfig
from dmat.runtime import resolve_device, resolve_precision, seed_everything
from dmat.stages.resume import checkpoint_to_resume, resume_command
from dmat.stages.tuning import log_tuning, tune_for_run
from dmat.tracking import lineage, notes, registry
from dmat.tracking.recorder import MlflowRecorder
from dmat.training.autotune import Tuning
from dmat.training.loop import EpochCallback, Job, TrainingLoss, TrainResult, fit, fit_together, micro_batch_size

log = logging.getLogger(__name__)


@dataclass
class ModelPlan:
    """What one training run trains: the role-specific half of `train_model`."""

    role: str
    run_name: str
    unet: UNetConfig
    diffusion: GaussianDiffusion
    criterion: Callable[[UNet], TrainingLoss]  # built once the network exists (a student's projections need it)
    tags: dict[str, str]
    params: dict[str, object]
    # weights to start from, given the network and the data (e.g. the pruned teacher); default: the seeded random init
    initial_weights: Callable[[UNet, DataSplits], dict] | None = None
    # the splits to train and validate on when not the data set's own (a lower-resolution student's: dmat.stages.resolution)
    data: DataSplits | None = None


def model_params(train: TrainConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, object]:
    """One flat namespace of params, the same names as the CLI options and MLproject parameters."""
    unet_fields = {k: v for k, v in flat_params("", unet).items() if k != "image_size"}
    return {**flat_params("", train), "image_size": unet.image_size, **unet_fields, **flat_params("", diffusion)}


def train_model(train: TrainConfig, plan: Callable[[torch.device], ModelPlan], experiment: str | None = None,
                resume: str | None = None, on_epoch_end: EpochCallback | None = None) -> str | None:
    """Train the model `plan(device)` describes as its own MLflow run; returns the run id (None on ranks > 0).

    `resume` continues that KILLED or FAILED run from its last.pt, in the same MLflow run. An error or
    interruption once the run exists carries a note (`__notes__`) saying the run's status and how to
    resume it.
    """
    ready = _prepare(train, plan, experiment, resume)
    spec, train = ready.spec, ready.train
    fit_args = (ready.model, spec.diffusion, ready.criterion, ready.splits, train, ready.device)
    if not distributed.is_main():  # under torchrun, rank 0 alone logs to MLflow
        fit(*fit_args, resume=ready.checkpoint, on_epoch_end=on_epoch_end, micro_batch=ready.micro_batch)
        return None
    start_epoch = ready.checkpoint["epoch"] if ready.checkpoint else 0
    recorder, run_id = MlflowRecorder(saved_epoch=start_epoch), None
    try:
        with tracking.tracked_run(spec.run_name, _tags(ready), experiment, run_id=resume) as run:
            run_id = run.info.run_id
            _open(run_id, ready, start_epoch)
            if not resume:
                lineage.log_training_data(train, ready.splits)  # the run's dataset inputs
            result = fit(*fit_args, recorder, resume=ready.checkpoint, on_epoch_end=on_epoch_end,
                         micro_batch=ready.micro_batch)
            _close(run_id, ready, result)
            return run_id
    except BaseException as exc:
        if run_id:
            _note(exc, how_to_resume(run_id, spec.role, recorder.saved_epoch, *_ended(exc)))
        raise


def train_models_together(train: TrainConfig, plans: list[Callable[[torch.device], ModelPlan]],
                          experiment: str | None = None, before_batch: Callable[[], None] | None = None,
                          resumes: list[str | None] | None = None) -> list[str | Exception]:
    """Train several models in one loop over the same batches (`training.fit_together`), each as its own MLflow
    run with everything `train_model` logs; per plan, its run id or the error that stopped it (the others go on).
    `resumes` names, per plan, an interrupted run it continues from its last.pt (None: a new run).

    The runs are open at once, so none is MLflow's active run while they train: params, metrics and
    checkpoints go to each by id. What logs to the active run only (the datasets, the MLflow Model) is done
    as each run ends, with it made active. Ctrl-C marks every unfinished run KILLED, each resumable alone.
    """
    outcomes: dict[int, str | Exception] = {}
    readies: dict[int, _Ready] = {}
    resumes = resumes or [None] * len(plans)
    splits = None  # loaded once: every model of the loop trains on the same batches
    for i, plan in enumerate(plans):
        try:
            readies[i] = _prepare(train, plan, experiment, resumes[i], splits)
            splits, train = readies[i].splits, _same_tuning(train, readies[i].train)  # one loop, one precision
        except Exception as exc:  # noqa: BLE001 - this model cannot start; the others still train
            outcomes[i] = exc
    runs: dict[int, tuple[contextlib.ExitStack, str, MlflowRecorder]] = {}
    try:
        for i, ready in readies.items():
            stack, start_epoch = contextlib.ExitStack(), ready.checkpoint["epoch"] if ready.checkpoint else 0
            run = stack.enter_context(tracking.tracked_run(ready.spec.run_name, _tags(ready), experiment,
                                                           run_id=resumes[i], active=False))
            runs[i] = (stack, run.info.run_id, MlflowRecorder(run_id=run.info.run_id, saved_epoch=start_epoch))
            _open(run.info.run_id, ready, start_epoch)
        first = next(iter(readies.values()), None)
        jobs = [Job(r.model, r.spec.diffusion, r.criterion, runs[i][2], r.micro_batch, resume=r.checkpoint)
                for i, r in readies.items()]
        results = fit_together(jobs, first.splits, first.train, first.device, before_batch) if first else []
        for (i, ready), result in zip(readies.items(), results):
            outcomes[i] = _finish_together(*runs[i], ready, result)
    except BaseException as exc:
        for i, (stack, run_id, recorder) in runs.items():
            if i not in outcomes:
                _note(exc, how_to_resume(run_id, readies[i].spec.role, recorder.saved_epoch, *_closed(stack, exc)))
        raise
    return [outcomes[i] for i in range(len(plans))]


def _finish_together(stack: contextlib.ExitStack, run_id: str, recorder: MlflowRecorder, ready: _Ready,
                     result: TrainResult | Exception) -> str | Exception:
    """End one run of a shared loop: made MLflow's active run, it logs its datasets and, if it trained, its
    sample grid and MLflow Model; returns the run id, or the error that ended it FAILED (with how to resume)."""
    try:
        with stack, mlflow.start_run(run_id=run_id, log_system_metrics=False):
            lineage.log_training_data(ready.train, ready.splits)  # the run's dataset inputs (once: MLflow dedups)
            if isinstance(result, Exception):
                raise result
            _close(run_id, ready, result)
        return run_id
    except Exception as exc:  # noqa: BLE001 - reported for this model; the others are not concerned
        _note(exc, how_to_resume(run_id, ready.spec.role, recorder.saved_epoch, *_ended(exc)))
        return exc


def _tags(ready: _Ready) -> dict[str, str]:
    spec = ready.spec
    return {tracking.ROLE: spec.role, tracking.DATASET: ready.train.dataset,
            tracking.IMAGE_SIZE: str(spec.unet.image_size), tracking.SIZE_FACTOR: str(spec.unet.size_factor),
            **spec.tags}


def _open(run_id: str, ready: _Ready, start_epoch: int) -> None:
    """What a run logs before training: params, the model's size and cost (a new run), its description."""
    tracking.log_params(ready.spec.params, run_id)
    if not start_epoch:
        mlflow.log_metrics(start_metrics(ready.model, ready.splits), run_id=run_id)
    notes.describe(run_id)  # the run's description in the MLflow UI
    log_tuning(ready.tuning, run_id)  # what --precision/--compile auto measured
    mlflow.log_metric("micro_batch_size", ready.micro_batch, step=start_epoch, run_id=run_id)


def _close(run_id: str, ready: _Ready, result: TrainResult) -> None:
    """What a run logs after training, while it is the active run: the sample grid and the registered MLflow
    Model (served with a student's own steps by default)."""
    train, spec = ready.train, ready.spec
    log_sample_grid(result.ema_model, spec.diffusion, train, ready.device)
    registry.publish(run_id, train.sampler, int(spec.params.get("student_steps", train.sample_steps)))


@dataclass
class _Ready:
    """Everything checked and built before the run is created."""

    train: TrainConfig
    device: torch.device
    spec: ModelPlan
    splits: DataSplits
    model: UNet
    criterion: TrainingLoss
    checkpoint: dict | None
    micro_batch: int
    tuning: Tuning | None = None


def _prepare(train: TrainConfig, plan: Callable[[torch.device], ModelPlan], experiment: str | None,
             resume: str | None, splits: DataSplits | None = None) -> _Ready:
    """Validate, choose the device, check the store, plan, load the data (unless given: the same for every model
    of a shared loop), seed, build, check a resume and run one batch forward and backward: bad input fails here,
    before any run exists."""
    train.validate()
    device = resolve_device(train.device)
    tracking.check_writable(experiment, run_id=resume)
    spec = plan(device)
    train = _sample_steps_within_timesteps(train, spec)
    splits = splits or spec.data or load_splits(train)
    seed_everything(train.seed)  # the seed fixes the initial weights too
    model = UNet(spec.unet)
    if spec.initial_weights is not None:
        model.load_state_dict(spec.initial_weights(model, splits))
    criterion = spec.criterion(model)
    checkpoint = checkpoint_to_resume(resume, spec.role, model, spec.diffusion) if resume else None
    batch = distributed.per_process_batch(train.batch_size)  # an uneven split fails before the run exists
    distributed.setup(device)
    first = torch.stack([splits.train[i] for i in range(min(batch, len(splits.train)))])
    train, tuning = tune_for_run(train, model, criterion, first, device, resume)  # auto: measured on this model
    spec.params = {**spec.params, **tuning.params}  # resolved.precision, resolved.compile
    micro = distributed.min_over_processes(micro_batch_size(model, criterion, first, device, train.precision), device)
    if micro < len(first):  # not `batch`: a data set smaller than a batch fits whole, and is no memory problem
        log.warning(f"note: a batch of {batch} does not fit in {device} memory: each batch is taken in "
                    f"{math.ceil(batch / micro)} micro-batches of up to {micro} (gradient accumulation: the same "
                    "optimizer step as the whole batch); logged as micro_batch_size")
    return _Ready(train, device, spec, splits, model, criterion, checkpoint, micro, tuning)


def _same_tuning(train: TrainConfig, tuned: TrainConfig) -> TrainConfig:
    """The models of one loop train alike: the first one's measured precision and compile, forced on the rest."""
    return dataclasses.replace(train, precision=tuned.precision, compile=tuned.compile)


def _sample_steps_within_timesteps(train: TrainConfig, spec: ModelPlan) -> TrainConfig:
    """The sample grid cannot take more steps than the model has timesteps: say so, and log the steps used."""
    timesteps = spec.diffusion.timesteps
    if train.sample_steps <= timesteps:
        return train
    log.warning(f"note: sample-steps {train.sample_steps} is more than the {timesteps} timesteps: the sample grid "
                f"takes {timesteps} steps (logged as resolved.sample_steps)")
    spec.params = {**spec.params, "resolved.sample_steps": timesteps}
    return dataclasses.replace(train, sample_steps=timesteps)


def _ended(exc: BaseException) -> tuple[str, bool]:
    """The status the run that `exc` stopped was given, and whether the store took it (a store that failed as the
    run was ended did not: the run still shows RUNNING)."""
    unmarked = tracking.unmarked_status(exc)
    return (unmarked, False) if unmarked else ("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", True)


def _closed(stack: contextlib.ExitStack, exc: BaseException) -> tuple[str, bool]:
    """Close one run of a shared loop that `exc` stopped; what _ended says of it."""
    try:
        stack.__exit__(type(exc), exc, exc.__traceback__)
    except Exception as failed:  # noqa: BLE001 - the store failed as the run was ended: the run's note says so
        return _ended(failed)
    return _ended(exc)


def how_to_resume(run_id: str, role: str, saved_epoch: int, status: str, marked: bool = True) -> str:
    """What became of a run that stopped early (its status, or the status the store did not take, so that it still
    shows RUNNING), and the command that continues it."""
    resume = f"resume with `{resume_command(role, run_id)}`" if saved_epoch >= 1 else "start it again"
    if not marked:
        saved = f"checkpoints/last.pt at epoch {saved_epoch}" if saved_epoch >= 1 else "nothing to resume"
        return (f"run {run_id} could not be marked {status} (the store did not take it) and still shows RUNNING, "
                f"with {saved}: once the store is back, `dmat runs --stale --mark-killed` marks it KILLED; then {resume}")
    if saved_epoch < 1:
        return f"run {run_id} is {status} before its first epoch finished, so there is nothing to resume: {resume}"
    return f"run {run_id} is {status} with checkpoints/last.pt at epoch {saved_epoch}: {resume}"


def _note(exc: BaseException, text: str) -> None:
    """`BaseException.add_note` (Python 3.11+), spelled so that 3.10 keeps the note too."""
    exc.__notes__ = [*getattr(exc, "__notes__", []), text]


def start_metrics(model: UNet, splits: DataSplits) -> dict[str, float]:
    """What a run knows before training: its model's size and cost, and its data's size."""
    return {"num_parameters": model.num_parameters, "flops_per_forward": flops_per_forward(model),
            "train_images": len(splits.train), "val_images": len(splits.val)}


def log_sample_grid(model: UNet, diffusion: GaussianDiffusion, cfg: TrainConfig, device) -> None:
    """Sample a grid from fixed noise with the run's own sampler settings and log it as a PNG."""
    c = model.config
    images = sample_from_seed(model.eval(), diffusion, cfg.num_sample_images, cfg.sampler, cfg.sample_steps, cfg.seed,
                              device, resolve_precision(cfg.precision, torch.device(device)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.png"
        zoom = max(1, 64 // c.image_size)  # small images (16 px digits) are enlarged to be seen in the UI
        images = F.interpolate(images, scale_factor=zoom, mode="nearest") if zoom > 1 else images
        save_image((images + 1) / 2, path, nrow=int(math.sqrt(cfg.num_sample_images)) or 1)
        mlflow.log_artifact(str(path), artifact_path="samples")
