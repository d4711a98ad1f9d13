"""An evaluation's scores against real data: FID/KID/precision/recall in each feature space at matched N against
each real reference (quality.py, spaces.py), and the memorisation check (memorisation.py), logged to the
active run."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import torch
from torch import nn

from dmat.config.evaluation import EvalConfig
from dmat.config.metrics import GRID_SCORES  # the headline's, at matched N (floor: kid_floor, ...)
from dmat.evaluation import memorisation, quality, spaces
from dmat.evaluation.logged import log_grid, log_npz
from dmat.evaluation.real_data import RealData


@dataclass
class GridPoint:
    """What the default step count already measured, reused as that step count's point of the steps grid:
    its headline scores (and cost), and the headline reference's features that every grid point is scored against."""

    scores: dict[str, float]
    reference: torch.Tensor


def _space_scores(extractor: nn.Module, fake: torch.Tensor, data: RealData, cfg: EvalConfig, n: int):
    """One space's matched-N scores against every reference; also the features of each image set."""

    def extract(images):
        return quality.extract(extractor, images, cfg.batch_size)

    references = {name: extract(images) for name, images in data.references.items()}
    feats = {"generated": extract(fake), "train": references["train"],
             "held_out": references["heldout"] if "heldout" in references else extract(data.val),
             "headline": references[data.headline]}
    return quality.quality_metrics(feats["generated"], references, data.headline, n, cfg.floor_draws, cfg.seed), feats


def score(extractors: dict[str, nn.Module], fake: torch.Tensor, data: RealData, cfg: EvalConfig, n: int) -> GridPoint:
    """FID/KID at matched N against each reference in each space of `extractors` (space name -> extractor; the
    headline space's scores also under the plain names), and the memorisation check in pixels and in the
    semantic space (the one that is not the headline); returns the headline scores and reference features."""
    headline, semantic = None, None
    for space, extractor in extractors.items():
        scores, feats = _space_scores(extractor, fake, data, cfg, n)
        mlflow.log_metrics(spaces.named(scores, space, space == spaces.HEADLINE_SPACE))
        if space == spaces.HEADLINE_SPACE:
            headline = GridPoint({k: scores[k] for k in GRID_SCORES}, feats["headline"])
        else:
            semantic = feats
    found = memorisation.memorisation({"generated": fake, "train": data.train, "held_out": data.unseen}, semantic)
    mlflow.log_metrics(found.metrics)
    copied = found.most_copied
    log_npz("memorisation/most_copied.npz", **copied)
    pairs = torch.from_numpy(np.concatenate([copied["samples"], copied["neighbours"]]))  # samples above neighbours
    log_grid("memorisation/most_copied.png", pairs, nrow=len(copied["samples"]))
    return headline
