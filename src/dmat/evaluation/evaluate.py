"""Evaluate one teacher or student run, the same way for every model, as an evaluation run.

Quality against real data in two feature spaces (FID/KID at matched N beside the real-vs-real floor's mean and
sd over draws, precision/recall; quality.py, spaces.py: the headline is the randomly initialised CNN's space, which
sees noise and blur, the classifier's beside it), memorisation (shift-tolerant nearest training images;
memorisation.py), behaviour against the teacher (shared-noise sampler trajectories, per-timestep epsilon
errors) and cost. Everything is at the model's own resolution. The FID/KID reference is the data set's held-out
split, which no model and no feature extractor trains on (real_data.py; param `reference` names the split); scores
against the train split are logged beside (`<metric>_train`, `<metric>_heldout`). Epsilon errors use the model's
validation split. A student is compared with its teacher (tag dmat.teacher_run_id); a teacher's own
evaluation leaves the vs-teacher metrics out (absent, not 0), since against itself they are zero by
construction, and so does a student below its teacher's resolution (param teacher_comparison says why).
"""

from __future__ import annotations

import logging
import time

import mlflow
import numpy as np
import torch
from tqdm.auto import tqdm

from dmat import tracking
from dmat.config import with_overrides
from dmat.config.datasets import preset_for
from dmat.config.evaluation import EvalConfig
from dmat.config.metrics import GRID_COSTS, GRID_SCORES, HEADLINE_SPACE_PARAM, grid_key
from dmat.errors import DmatError
from dmat.evaluation import features, quality, spaces, timing, trajectories
from dmat.evaluation.logged import log_denoising, log_history, log_npz, on_model_run
from dmat.evaluation.pending import SETTINGS, sampling_precision, settings_of, still_to_evaluate, wanted_settings
from dmat.evaluation.real_data import model_data, quality_n
from dmat.evaluation.scoring import GridPoint, score
from dmat.model.diffusion import sample
from dmat.model.flops import flops_per_forward
from dmat.runtime import resolve_device
from dmat.tracking import claims, lineage, notes, registry

SAVED_TRAJECTORIES = 4

log = logging.getLogger(__name__)


def _teacher_of(loaded: tracking.LoadedModel, device) -> tracking.LoadedModel | None:
    """The student's teacher, checked to share the student's channels and noise schedule."""
    if loaded.role == tracking.TEACHER:
        return None
    teacher_id = loaded.tags.get(tracking.TEACHER_RUN_ID)
    if not teacher_id:
        raise DmatError(f"student run {loaded.run_id} has no {tracking.TEACHER_RUN_ID} tag: it cannot be compared")
    teacher = tracking.load_model(teacher_id, device=device)
    a, b = loaded.model.config, teacher.model.config
    if a.in_channels != b.in_channels:
        raise DmatError(f"student {loaded.run_id} has {a.in_channels} channels, its teacher {b.in_channels}: "
                        "they cannot be compared")
    sa, sb = loaded.diffusion.config, teacher.diffusion.config
    if (sa.timesteps, sa.schedule) != (sb.timesteps, sb.schedule):
        raise DmatError(f"student {loaded.run_id} and its teacher use different noise schedules")
    return teacher


def _checked(loaded: tracking.LoadedModel, cfg: EvalConfig, feature_extractor_run_id: str | None) -> int:
    """The model's sampling steps, after what can be checked before any data is read or any run exists: the steps
    within its timesteps, its data set's channels against its own, its samples within the memory available."""
    steps = cfg.resolved_steps(loaded.role, loaded.params)
    for s in (steps, *cfg.steps_grid):
        loaded.diffusion.sampling_timesteps(s)
    c, dataset = loaded.model.config, loaded.tags[tracking.DATASET]
    if preset_for(dataset).channels != c.in_channels:
        raise DmatError(f"run {loaded.run_id} is a {c.in_channels}-channel model but its {tracking.DATASET} tag names "
                        f"{dataset}, which has {preset_for(dataset).channels} channels: set the tag to the data set "
                        "it trained on")
    dims = spaces.RANDCNN_DIM + features.planned_feature_dim(cfg.features, dataset, c.image_size,
                                                             feature_extractor_run_id)
    timing.check_fits_in_memory(cfg.num_samples, timing.sample_bytes(c.in_channels, c.image_size, dims),
                                f"{c.in_channels}x{c.image_size}x{c.image_size} images and {dims} features")
    return steps


def _compared(loaded: tracking.LoadedModel, teacher: tracking.LoadedModel | None
              ) -> tuple[tracking.LoadedModel | None, dict[str, str]]:
    """The teacher to compare with through shared noise (trajectories, epsilon errors), and a param saying why
    there is none. A student below its teacher's resolution (dmat.stages.resolution) is not compared: one noise cannot
    start both, and the teacher is never fed images of another size. Its vs-teacher metrics are absent, not 0."""
    if teacher is None or teacher.model.config.image_size == loaded.model.config.image_size:
        return teacher, {}
    note = (f"skipped: the student works at {loaded.model.config.image_size}px, its teacher at "
            f"{teacher.model.config.image_size}px (shared-noise comparisons need one resolution)")
    log.warning(f"note: teacher comparison {note}")
    return None, {"teacher_comparison": note}


def _extractors(cfg: EvalConfig, loaded, feature_extractor_run_id, inception_weights, device):
    """The semantic space's extractor (its run id, None for Inception) and both spaces' extractors by name."""
    if cfg.features == "inception":
        run_id, semantic = None, features.InceptionFeatures(features.inception_weights_path(inception_weights))
    else:
        run_id, semantic = features.feature_extractor_for(loaded.tags[tracking.DATASET], loaded.model.config.image_size,
                                                          feature_extractor_run_id, device)
    randcnn = spaces.RandomCNNFeatures(loaded.model.config.in_channels)
    return run_id, {spaces.HEADLINE_SPACE: randcnn.to(device), cfg.features: semantic.to(device)}


@torch.inference_mode()
def _generate(model, diffusion, cfg: EvalConfig, steps: int, device) -> tuple[torch.Tensor, list[float]]:
    """`num_samples` images from seeded noise, in batches; also each full batch's wall time."""
    c = model.config
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    step_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    images, seconds = [], []
    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="sampling", unit="batch", dynamic_ncols=True):
        n = min(cfg.batch_size, cfg.num_samples - start)
        x_T = torch.randn((n, c.in_channels, c.image_size, c.image_size), generator=noise_gen).to(device)
        x, s = timing.timed(lambda: sample(model, diffusion, x_T, cfg.sampler, steps, generator=step_gen,
                                               precision=cfg.precision), device)
        images.append(x.cpu())
        if n == cfg.batch_size:
            seconds.append(s)
    return torch.cat(images), seconds


def _latency_ms(loaded, cfg: EvalConfig, steps: int, device) -> float:
    """Median wall time of sampling one image (batch 1) with `steps` steps, in ms."""
    model, c = loaded.model, loaded.model.config
    one = torch.randn((1, c.in_channels, c.image_size, c.image_size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latency = timing.median_seconds(lambda: sample(model, loaded.diffusion, one.to(device), cfg.sampler, steps,
                                                             precision=cfg.precision),
                                      device, repeats=3)
    return 1000 * latency


def _cost_metrics(loaded, cfg: EvalConfig, steps: int, device) -> dict[str, float]:
    model = loaded.model
    return {"num_parameters": model.num_parameters, "flops_per_forward": flops_per_forward(model),
            "checkpoint_mb": timing.checkpoint_mb(loaded.run_id),
            "latency_ms_per_image": _latency_ms(loaded, cfg, steps, device)}


def _throughput(cfg: EvalConfig, seconds: list[float]) -> dict[str, float]:
    """Images per second of the full sampling batches (a single short batch is not a throughput)."""
    return {"throughput_images_per_s": cfg.batch_size / float(np.median(seconds))} if seconds else {}


def _steps_grid(loaded, extractor, cfg: EvalConfig, steps: int, n: int, default: GridPoint, device) -> None:
    """Quality and sampling cost at each step count of `cfg.steps_grid`, as metric series `grid_<name>` with
    step = sampling steps. Every point samples the same starting noise and is scored at the same N, draws
    and real sets as the headline KID/FID (whose floor it shares); the default step count's point is the
    headline itself, not sampled again, and is in the series whether or not the grid names it.
    `grid_flops_per_image` = forward passes x flops_per_forward; `grid_extra_seconds`: what the grid cost."""
    start = time.perf_counter()
    points = {steps: default.scores}
    for s in sorted(set(cfg.steps_grid) - {steps}):
        fake, seconds = _generate(loaded.model, loaded.diffusion, cfg, s, device)
        scores = quality.matched_scores(quality.extract(extractor, fake, cfg.batch_size), default.reference, n,
                                        cfg.floor_draws, cfg.seed, floor=False)
        points[s] = {**{k: scores[k] for k in GRID_SCORES}, **_throughput(cfg, seconds),
                     "latency_ms_per_image": _latency_ms(loaded, cfg, s, device)}
    flops = default.scores["flops_per_forward"]
    for s, point in points.items():
        point["flops_per_image"] = len(loaded.diffusion.sampling_timesteps(s)) * flops
    for name in (*GRID_SCORES, *GRID_COSTS):
        log_history(grid_key(name), {s: p[name] for s, p in points.items() if name in p})
    mlflow.log_metric("grid_extra_seconds", time.perf_counter() - start)


def _behaviour(loaded, teacher, cfg: EvalConfig, steps: int, held_out: torch.Tensor, device) -> None:
    """Shared-noise trajectories and per-timestep epsilon errors, logged to the active run."""
    c = loaded.model.config
    x_T = torch.randn((cfg.num_trajectories, c.in_channels, c.image_size, c.image_size),
                      generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    own = trajectories.record(loaded.model, loaded.diffusion, x_T, cfg.sampler, steps, cfg.seed + 1)
    mlflow.log_metric("path_length", trajectories.path_length(own))
    ref = own
    if teacher is not None:
        ref = trajectories.record(teacher.model, teacher.diffusion, x_T, cfg.sampler, steps, cfg.seed + 1)
        vs = trajectories.compare(own, ref)
        for name in ("traj_mse", "traj_cosine"):
            log_history(name, dict(enumerate(vs.pop(name))))
        mlflow.log_metrics({**vs, "teacher_path_length": trajectories.path_length(ref)})
    log_npz("trajectories/trajectories.npz", model=own.states[:SAVED_TRAJECTORIES].numpy().astype(np.float16),
             teacher=ref.states[:SAVED_TRAJECTORIES].numpy().astype(np.float16), timesteps=np.array(own.timesteps))
    log_denoising(own.states, own.timesteps)

    timesteps = sorted(loaded.diffusion.sampling_timesteps(min(cfg.eps_timesteps, loaded.diffusion.timesteps)))
    errors = trajectories.eps_errors(loaded.model, loaded.diffusion, held_out, timesteps, cfg.seed,
                                     teacher=teacher and teacher.model, teacher_diffusion=teacher and teacher.diffusion,
                                     batch_size=cfg.batch_size)
    for name, series in errors.items():
        log_history(name, series)


def evaluate_run(model_run_id: str, config: EvalConfig | None = None, feature_extractor_run_id: str | None = None,
                 inception_weights: str | None = None, experiment: str | None = None, claim: bool = False,
                 **overrides) -> str:
    """Evaluate a teacher or student run as a new evaluation run; returns its id. With `claim`, an evaluation
    of the same model and settings that another process started first (or finished) is left to it:
    tracking.claims.ClaimedElsewhere names it.

    Settings come from `config` and keyword overrides (`num_samples=300`, `steps="20"`, ...).
    Everything that can be wrong (settings, run, checkpoint, data, extractor, sample counts) is
    checked before the evaluation run is created, and the sample counts before any feature
    extractor is trained.
    """
    cfg = with_overrides(config or EvalConfig(), **overrides).validate()
    device = resolve_device(cfg.device)
    tracking.check_tracking_reachable()
    loaded = tracking.load_model(registry.run_id_of(model_run_id), device=device)  # a run id or models:/ URI
    cfg = with_overrides(cfg, precision=sampling_precision(cfg.precision, loaded.params, device))  # fp32 or bf16
    steps = _checked(loaded, cfg, feature_extractor_run_id)
    teacher = _teacher_of(loaded, device)
    compared, comparison = _compared(loaded, teacher)
    data = model_data(loaded)
    n = quality_n(cfg, loaded, data, feature_extractor_run_id, inception_weights)
    extractor_run_id, extractors = _extractors(cfg, loaded, feature_extractor_run_id, inception_weights, device)
    for extractor in extractors.values():  # the planned dimension holds unless the extractor's run did not log it
        quality.check_sample_count(n, extractor.num_features, f"N of num-samples={cfg.num_samples}")

    tags = {tracking.ROLE: tracking.EVALUATION, tracking.MODEL_RUN_ID: loaded.run_id, tracking.MODEL_ROLE: loaded.role,
            tracking.TEACHER_RUN_ID: teacher.run_id if teacher else loaded.run_id,
            **{k: loaded.tags[k] for k in (tracking.METHOD, tracking.INIT, tracking.SIZE_FACTOR, tracking.DATASET,
                                           tracking.IMAGE_SIZE) if k in loaded.tags}}
    if extractor_run_id:
        tags[tracking.FEATURE_EXTRACTOR_RUN_ID] = extractor_run_id
    name = f"eval-{loaded.tags.get(tracking.RUN_NAME) or loaded.role}-{loaded.run_id[:8]}"  # names the model
    work = claims.claim_key(tracking.EVALUATION, loaded.run_id, settings_of(wanted_settings(cfg, steps, loaded.params)), cfg.steps_grid)
    with tracking.tracked_run(name, tags, experiment, claim=work if claim else None) as run:
        tracking.log_params({**{k: getattr(cfg, k) for k in ("sampler", "num_samples", "features", "seed", "batch_size",
                                                            "num_trajectories", "eps_timesteps", "floor_draws", "precision")},
                             "steps": steps, **({"steps_grid": cfg.steps_grid} if cfg.steps_grid else {}),
                             HEADLINE_SPACE_PARAM: spaces.HEADLINE_SPACE, **data.params(), **comparison})
        lineage.log_evaluation_data(loaded.tags[tracking.DATASET], loaded.model.config.image_size, data.train, data.val,
                                    data.test)  # the run's dataset inputs
        notes.describe(run.info.run_id)  # the run's description in the MLflow UI
        timing.reset_peak_memory(device)
        costs = _cost_metrics(loaded, cfg, steps, device)
        mlflow.log_metrics(costs)
        fake, seconds = _generate(loaded.model, loaded.diffusion, cfg, steps, device)
        mlflow.log_metrics(_throughput(cfg, seconds))
        headline = score(extractors, fake, data, cfg, n)
        if cfg.steps_grid:
            headline.scores.update({**costs, **_throughput(cfg, seconds)})
            _steps_grid(loaded, extractors[spaces.HEADLINE_SPACE], cfg, steps, n, headline, device)
        _behaviour(loaded, compared, cfg, steps, data.val, device)
        mlflow.log_metric("peak_memory_mb", timing.peak_memory_mb(device))
    registry.record_evaluation(loaded.run_id, run.info.run_id, SETTINGS)  # once the run is finished: the claim held
    on_model_run(loaded.run_id, run.info.run_id)  # its scores beside the model's size, one row per model in the UI
    return run.info.run_id


def evaluate_all(config: EvalConfig | None = None, feature_extractor_run_id: str | None = None,
                 inception_weights: str | None = None, experiment: str | None = None, **overrides) -> list[str]:
    """Evaluate every finished teacher and student run not yet evaluated with these settings (and every step
    count of the steps grid; pending.py). With steps "student" only students are evaluated."""
    cfg = with_overrides(config or EvalConfig(), **overrides).validate()
    tracking.check_tracking_reachable()
    done = []
    for run_id in still_to_evaluate(cfg):
        try:
            done.append(evaluate_run(run_id, cfg, feature_extractor_run_id, inception_weights, experiment, claim=True))
        except claims.ClaimedElsewhere as held:  # another `evaluate --all` (or stage) got to it first
            tqdm.write(f"run {run_id}: left to evaluation {held.run_id}, which another process started first")
    return done
