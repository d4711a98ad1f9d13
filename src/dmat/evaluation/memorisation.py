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

These raw distances miss a copy with a little noise (sigma 0.2 puts it as far as unseen images are) or shifted by
one pixel. The copy test that survives both, `copy_rate` (Carlini et al. 2023, "Extracting training data from
diffusion models", measure a copy as nearer its nearest training image than the others), compares images after
a low-pass filter (Gaussian, sigma BLUR_SIGMA px: averages pixel noise away, keeps the strokes) and at the best
of every shift by up to SHIFT px (a shifted copy is at distance ~0), and scores each sample by the ratio of its
distance to the nearest training image over that to the second nearest: ~1 for a sample among many similar
training images, ~0 for a copy of one. A sample is a copy when its ratio is below the COPY_QUANTILE quantile of
the held-out real images' ratios (their k-th smallest, k = COPY_QUANTILE x (n + 1)), so `copy_rate_chance` = k /
(n + 1) of unseen images drawn like them count by chance; `copy_alarm` is 1 when a one-sided test against chance
gives p < ALARM_P (`copy_p_value`): the model reproduces training images, whatever its FID/KID. The test is exact
for a finite held-out set: the chance a new unseen image falls below the k-th smallest of n is Beta(k, n + 1 - k), so
a model that does not copy makes beta-binomial copies (a binomial at COPY_QUANTILE ignores the threshold's own noise
and alarmed unseen images; a 2x-chance rule missed a 2-px-shift memoriser at 0.093, issue 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import betabinom
from torchvision.transforms.functional import gaussian_blur

COPY_PERCENTILE = 1.0
MOST_COPIED = 8  # samples shown next to their nearest training images
SHIFT, BLUR_SIGMA = 1, 1.0
COPY_QUANTILE, ALARM_P = 0.05, 0.01


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


def low_pass(images: torch.Tensor) -> torch.Tensor:
    """Images [n, C, H, W] under a Gaussian blur of BLUR_SIGMA px (a 5 x 5 kernel, edges reflected)."""
    return gaussian_blur(images.float(), kernel_size=5, sigma=BLUR_SIGMA)


def shifted(images: torch.Tensor, by: int = SHIFT) -> list[torch.Tensor]:
    """Every shift of `images` by up to `by` px in each direction (edge pixels repeated), the unshifted first."""
    size = images.shape[-1]
    padded = F.pad(images, (by, by, by, by), mode="replicate")
    moves = sorted(((dy, dx) for dy in range(-by, by + 1) for dx in range(-by, by + 1)), key=lambda m: m != (0, 0))
    return [padded[..., by + dy : by + dy + size, by + dx : by + dx + size] for dy, dx in moves]


def two_nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift-tolerant low-pass distances of each query image to its nearest and second-nearest reference images
    ([n, 2], float64; each the best over the query's shifts) and the nearest one's index."""
    reference = low_pass(reference).flatten(1).double()
    views = [low_pass(view).flatten(1).double() for view in shifted(query)]
    best = torch.full((len(query), 2), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(reference), chunk):
        part = reference[start : start + chunk]
        d = torch.stack([torch.cdist(view, part) for view in views]).min(dim=0).values
        both = torch.cat([best, d], dim=1)
        order = both.topk(2, dim=1, largest=False)
        index = torch.where(order.indices[:, 0] >= 2, order.indices[:, 0] - 2 + start, index)
        best = order.values
    return best, index


def copy_test(generated: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The shift- and noise-tolerant copy test of the module docstring: its metrics, and each generated sample's
    ratio and nearest training image."""
    gen_d, gen_i = two_nearest(generated, train)
    real_d, _ = two_nearest(held_out, train)
    gen_ratio, real_ratio = gen_d[:, 0] / gen_d[:, 1], real_d[:, 0] / real_d[:, 1]
    n, k = len(real_ratio), max(1, round(COPY_QUANTILE * (len(real_ratio) + 1)))
    threshold = real_ratio.sort().values[k - 1].item()  # the k-th smallest held-out ratio
    copies = int((gen_ratio < threshold).sum())
    rate = copies / len(generated)
    # an image drawn like the held-out ones falls below their k-th smallest with probability ~ Beta(k, n + 1 - k)
    # (order statistics of exchangeable draws): the copies of a model that does not copy are beta-binomial
    p_value = float(betabinom.sf(copies - 1, len(generated), k, n + 1 - k))
    metrics = {"copy_rate": rate, "copy_rate_chance": k / (n + 1), "copy_ratio_threshold": threshold,
               "copy_p_value": p_value, "copy_alarm": float(p_value < ALARM_P),
               "nn_ratio": gen_ratio.median().item(), "nn_ratio_heldout": real_ratio.median().item()}
    return metrics, gen_ratio, gen_i


@dataclass
class Memorisation:
    metrics: dict[str, float]
    # samples, neighbours [MOST_COPIED, C, H, W]; distances: their copy-test ratios, below `threshold` = a copy
    most_copied: dict[str, np.ndarray]


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
    metrics = {}
    for space, sets in (("pixel", images), ("feature", features)):
        metrics.update(_space_metrics(space, sets["generated"], sets["held_out"], sets["train"])[0])
    found, ratio, nearest_train = copy_test(images["generated"], images["held_out"], images["train"])
    metrics.update(found)
    order = ratio.argsort()[:MOST_COPIED]
    most_copied = {"samples": images["generated"][order].numpy(), "neighbours": images["train"][nearest_train[order]].numpy(),
                   "distances": ratio[order].numpy(), "threshold": np.array(found["copy_ratio_threshold"])}
    return Memorisation(metrics, most_copied)
