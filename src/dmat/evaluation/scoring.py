"""An evaluation's scores against real data: FID/KID/precision/recall in each feature space at matched N against
each real reference beside its cached floor (quality.py, spaces.py, floor.py), and the memorisation check
(memorisation.py), logged to the active run."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import torch
from torch import nn

from dmat.config.evaluation import EvalConfig
from dmat.config.metrics import GRID_SCORES  # the headline's, at matched N (floor: kid_floor, ...)
from dmat import tracking
from dmat.evaluation import coverage, floor, memorisation, quality, spaces
from dmat.evaluation.logged import log_grid, log_npz
from dmat.evaluation.real_data import RealData
from dmat.tracking import vocabulary


@dataclass
class GridPoint:
    """What the default step count already measured, reused as that step count's point of the steps grid:
    its headline scores (and cost), and the headline reference's features that every grid point is scored against."""

    scores: dict[str, float]
    reference: torch.Tensor


def _about(space: str, reference: str, images: torch.Tensor) -> dict[str, str]:
    """What a floor is of, read from the active evaluation run: its data set, resolution and extractor run."""
    tags = tracking.get_run(mlflow.active_run().info.run_id).data.tags
    extractor = tags.get(tracking.FEATURE_EXTRACTOR_RUN_ID) if space != spaces.HEADLINE_SPACE else None
    return {"space": space, "reference": reference, "dataset": tags.get(tracking.DATASET, ""),
            "image_size": str(images.shape[-1]), **({"extractor_run_id": extractor} if extractor else {})}


def _floors(extractor: nn.Module, space: str, data: RealData, references: dict[str, torch.Tensor], cfg: EvalConfig,
            n: int) -> dict[str, dict[str, float]]:
    """Each reference's floor in this space (cached per reference, extractor, N and seed: floor.py), tagged on the
    active run with the floor run it came from."""
    out = {}
    for name, feats in references.items():
        images = data.references[name]
        found = floor.floor_of(images, feats, extractor, n, cfg.seed, _about(space, name, images))
        mlflow.set_tag(f"{vocabulary.FLOOR_RUN_ID}.{space}.{name}", found.run_id)
        out[name] = found.scores
    return out


def _space_scores(extractor: nn.Module, space: str, fake: torch.Tensor, data: RealData, cfg: EvalConfig, n: int):
    """One space's matched-N scores against every reference; also the features of each image set."""

    def extract(images):
        return quality.extract(extractor, images, cfg.batch_size)

    references = {name: extract(images) for name, images in data.references.items()}
    feats = {"generated": extract(fake), "train": references["train"],
             "held_out": references["heldout"] if "heldout" in references else extract(data.val),
             "headline": references[data.headline]}
    floors = _floors(extractor, space, data, references, cfg, n)
    return quality.quality_metrics(feats["generated"], references, data.headline, n, cfg.floor_draws, cfg.seed,
                                   floors), feats


def score(extractors: dict[str, nn.Module], fake: torch.Tensor, data: RealData, cfg: EvalConfig, n: int) -> GridPoint:
    """FID/KID at matched N against each reference in each space of `extractors` (space name -> extractor; the
    headline space's scores also under the plain names), and the memorisation check in pixels and in the
    semantic space (the one that is not the headline); returns the headline scores and reference features."""
    headline, semantic = None, None
    tracking.log_params({floor.ESTIMATE_PARAM: floor.ESTIMATE})
    for space, extractor in extractors.items():
        scores, feats = _space_scores(extractor, space, fake, data, cfg, n)
        mlflow.log_metrics(spaces.named(scores, space, space == spaces.HEADLINE_SPACE))
        if space == spaces.HEADLINE_SPACE:
            headline = GridPoint({k: scores[k] for k in GRID_SCORES}, feats["headline"])
        else:
            semantic = feats
    classifier = extractors.get(cfg.features)
    if hasattr(classifier, "classify"):  # a digit classifier (not Inception): which classes the model makes
        _log_coverage(classifier, fake, data.references[data.headline], n, cfg)
    found = memorisation.memorisation({"generated": fake, "train": data.train, "held_out": data.unseen}, semantic)
    mlflow.log_metrics(found.metrics)
    copied = found.most_copied
    log_npz("memorisation/most_copied.npz", **copied)
    pairs = torch.from_numpy(np.concatenate([copied["samples"], copied["neighbours"]]))  # samples above neighbours
    log_grid("memorisation/most_copied.png", pairs, nrow=len(copied["samples"]))
    return headline


def _log_coverage(classifier: nn.Module, fake: torch.Tensor, real: torch.Tensor, n: int, cfg: EvalConfig) -> None:
    """The class-coverage score (coverage.py) against the headline reference, its missing classes as a tag and
    both class mixes as an artifact."""
    num_classes = classifier.head.out_features
    made = coverage.predicted_classes(classifier, fake, cfg.batch_size)
    truth = coverage.predicted_classes(classifier, real, cfg.batch_size)
    scores, missing = coverage.class_coverage(made, truth, num_classes, n, cfg.seed)
    mlflow.log_metrics(scores)
    mlflow.set_tag(vocabulary.MISSING_CLASSES, ",".join(map(str, missing)))
    mlflow.log_dict({"generated": coverage.shares(made, num_classes).tolist(),
                     "real": coverage.shares(truth, num_classes).tolist()}, "coverage/class_shares.json")
