"""The real-vs-real floor an evaluation compares its scores with: estimated from many draws, once, and cached.

The floor (FID/KID of N real vs N other real images, quality.py) is a distribution, and its sd is what "inside the
floor" is measured in. From the 10 draws an evaluation scores a model over, that sd varied 3-5x (digits) and 7-12x
(mnist5k) between 20 evaluation seeds (bench/bench_floor.py; 6x and 19x in issue 32's check), and a perfect
generator (unseen real images) fell outside +-2 sd in 2 of 20 mnist5k evaluations. The floor depends only on the
reference images, the feature extractor, N and the seed, so it is estimated from FLOOR_DRAWS draws (its sd then
varies 1.4-2x over seeds and the perfect generator is inside in 20 of 20, KID and FID, both spaces, both data sets)
and cached as a floor run (dmat.role=floor): its metrics are the floor, its artifact the
per-draw values, and its tag dmat.floor_key a digest of those four inputs. Every later evaluation with the same key
(every model of a study, each step count of a grid) reads it back, so the cost is paid once per study.

Why draws and not an analytic variance of unbiased KID (Sutherland et al. 2017): the draws give FID's floor too,
by one method; they are the floor's own definition (disjoint halves of one finite reference), where the U-statistic
variance assumes independent samples and, with both sides from one distribution (the floor's case), is degenerate
at first order, so its plug-in estimate is dominated by the noise of a term that is zero.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import mlflow
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from torch import nn

from dmat import tracking
from dmat.evaluation import quality
from dmat.tracking import vocabulary

FLOOR_DRAWS = 100
ESTIMATE_PARAM = "floor_estimate"  # on an evaluation: how its floor was estimated (a comparability setting)
ESTIMATE = f"{FLOOR_DRAWS} draws, cached per reference, extractor, N and seed"
KEY_VERSION = 1  # raised when the floor's computation changes, so that no older floor run is read back


@dataclass(frozen=True)
class Floor:
    """One reference's floor in one space: fid_floor, fid_floor_sd, kid_floor, kid_floor_sd; the floor run."""

    scores: dict[str, float]
    run_id: str


def _digest(tensors) -> str:
    sha = hashlib.sha256()
    for t in tensors:
        sha.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return sha.hexdigest()


def floor_key(reference_images: torch.Tensor, extractor: nn.Module, n: int, seed: int) -> str:
    """What the floor is a function of, hashed: the reference's images (data set, split, resolution), the
    extractor's weights (its space, and its run), N, the seed of the draws, FLOOR_DRAWS and KEY_VERSION."""
    state = extractor.state_dict()
    head = torch.tensor([KEY_VERSION, FLOOR_DRAWS, n, seed, *reference_images.shape], dtype=torch.float32)
    return _digest([head, reference_images, *(state[k] for k in sorted(state))])[:32]


def _cached(key: str) -> Floor | None:
    """The floor of the newest finished floor run with this key, None when there is none."""
    found = tracking.find_runs(vocabulary.FLOOR, {vocabulary.FLOOR_KEY: key}, max_results=1)
    if not found:
        return None
    metrics = found[0].data.metrics
    names = [f"{m}_floor{sd}" for m in quality.METRICS for sd in ("", "_sd")]
    return Floor({name: metrics[name] for name in names}, found[0].info.run_id)


def _experiment_id() -> str:
    """The active run's experiment (the evaluation's), else the one new runs go to."""
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    client, name = MlflowClient(), tracking.experiment_name(None)
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _log(key: str, per_draw: dict[str, list[float]], scores: dict[str, float], about: dict[str, str]) -> str:
    """A finished floor run holding the floor (metrics), its draws (artifact) and what it is of (tags, params);
    written through the client, beside the evaluation run that is active."""
    client = MlflowClient()
    parts = ("space", "reference", "dataset", "image_size", "quality_n", "seed")
    name = "-".join(about[k] for k in parts if k in about)
    tags = {vocabulary.ROLE: vocabulary.FLOOR, vocabulary.FLOOR_KEY: key, vocabulary.RUN_NAME: f"floor-{name}",
            **{tag: about[k] for k, tag in (("dataset", vocabulary.DATASET), ("image_size", vocabulary.IMAGE_SIZE),
                                            ("extractor_run_id", vocabulary.FEATURE_EXTRACTOR_RUN_ID)) if about.get(k)}}
    run_id, status = client.create_run(_experiment_id(), tags=tags).info.run_id, "FAILED"
    try:
        params = {**about, "floor_draws": FLOOR_DRAWS, ESTIMATE_PARAM: ESTIMATE}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in scores.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.log_dict(run_id, per_draw, vocabulary.FLOOR_DRAWS_FILE)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def floor_of(reference_images: torch.Tensor, reference_features: torch.Tensor, extractor: nn.Module, n: int,
             seed: int, about: dict[str, str]) -> Floor:
    """The floor of N real vs N other real reference images in `extractor`'s space (features given), over
    FLOOR_DRAWS draws fixed by `seed`: read back from the floor run of its key, else computed and logged as one.
    `about` names what it is of (space, reference, data set, ...): the floor run's params, not its key."""
    key = floor_key(reference_images, extractor, n, seed)
    cached = _cached(key)
    if cached is not None:
        return cached
    per_draw = quality.floor_values(reference_features, n, FLOOR_DRAWS, seed)
    scores = quality.summarised(per_draw)
    return Floor(scores, _log(key, per_draw, scores, {**about, "quality_n": str(n), "seed": str(seed)}))
