"""Memorisation: are generated samples closer to the training images than unseen real images are?

A reference set the model trained on cannot show copying (a model that returns its training images
scores a near-perfect FID against it), so every evaluation also measures, for each generated sample,
the L2 distance to its nearest training image, in pixel space and in the extractor's feature space,
and the same distance for held-out real images (never trained on). A model that generalises puts its
samples about as far from the training set as unseen real images are; one that copies puts them closer.

copy_rate_<space>: the fraction of all generated samples nearer to a training image than the
COPY_PERCENTILE-th percentile of the held-out real images' distances. By construction about
COPY_PERCENTILE % of unseen real images fall below it, so ~0.01 is chance and 1.0 is a copier.
N: every generated sample, the model's whole train split, every held-out image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COPY_PERCENTILE = 1.0
MOST_COPIED = 8  # samples shown next to their nearest training images


def nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `query` ([n, ...], flattened), the L2 distance to its nearest row of `reference` and
    that row's index. In float64 (float32 distances of near-copies are mostly rounding), a chunk of the
    reference at a time, so a large training set is never held as one float64 copy or n x m matrix."""
    q = query.flatten(1).double()
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(reference), chunk):
        d = torch.cdist(q, reference[start : start + chunk].flatten(1).double()).min(dim=1)
        closer = d.values < best
        best = torch.where(closer, d.values, best)
        index = torch.where(closer, d.indices + start, index)
    return best, index


@dataclass
class Memorisation:
    metrics: dict[str, float]
    most_copied: dict[str, np.ndarray]  # samples, neighbours [MOST_COPIED, C, H, W], distances, threshold


def _space_metrics(space: str, generated: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor):
    gen_d, gen_i = nearest(generated, train)
    real_d, _ = nearest(held_out, train)
    threshold = torch.quantile(real_d, COPY_PERCENTILE / 100).item()
    metrics = {f"copy_rate_{space}": (gen_d < threshold).double().mean().item(),
               f"nn_distance_{space}": gen_d.median().item(),
               f"nn_distance_{space}_heldout": real_d.median().item()}
    return metrics, gen_d, gen_i, threshold


def memorisation(images: dict[str, torch.Tensor], features: dict[str, torch.Tensor]) -> Memorisation:
    """Copy rates and nearest-neighbour distances; `images` and `features` each hold `generated`,
    `train` (the model's train split) and `held_out` (real images no model trained on)."""
    metrics, most_copied = {}, {}
    for space, sets in (("pixel", images), ("feature", features)):
        found, gen_d, gen_i, threshold = _space_metrics(space, sets["generated"], sets["held_out"], sets["train"])
        metrics.update(found)
        if space == "pixel":
            order = gen_d.argsort()[:MOST_COPIED]
            most_copied = {"samples": images["generated"][order].numpy(),
                           "neighbours": images["train"][gen_i[order]].numpy(),
                           "distances": gen_d[order].numpy(), "threshold": np.array(threshold)}
    return Memorisation(metrics, most_copied)
