"""Sample quality against real data: FID and KID (torchmetrics), precision and recall.

All of them are computed in the features of one fixed extractor (evaluation/features.py), so every
model of a study is measured in the same space. FID is biased by the sample count, so each one is
reported beside the real-vs-real floor: the same metric between two disjoint halves of the real
data, the best a model could do at that sample size.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from dmat.errors import DmatError

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PR_NEIGHBOURS = 3  # k of Kynkaanniemi et al. 2019


def _batches(images: torch.Tensor, batch_size: int, device):
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size].to(device)


@torch.inference_mode()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features of `images` (in [-1, 1]) as one float64 CPU tensor [n, feature_dim]."""
    device = next(extractor.parameters()).device
    return torch.cat([extractor(x).double().cpu() for x in _batches(images, batch_size, device)])


def check_sample_count(n: int, feature_dim: int, what: str) -> None:
    if n <= feature_dim:
        raise DmatError(
            f"{what} has {n} images but the features have {feature_dim} dimensions: FID needs more samples "
            f"than feature dimensions (use more than {feature_dim})"
        )


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on feature vectors.

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: the share of generated points inside the real manifold; recall: the share
    of real points inside the generated one.
    """

    def radii(f):  # k+1: the nearest point of each is itself
        return torch.cdist(f, f).kthvalue(k + 1, dim=1).values

    def inside(query, ref, ref_radii):
        return (torch.cdist(query, ref) <= ref_radii[None]).any(dim=1).double().mean().item()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@torch.inference_mode()
def fid_kid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500,
            seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std over subsets) of `fake` against `real`, through torchmetrics."""
    check_sample_count(len(real), extractor.num_features, "the real set")
    check_sample_count(len(fake), extractor.num_features, "the generated set")
    device = next(extractor.parameters()).device
    fid = FrechetInceptionDistance(feature=extractor).to(device)
    subset = min(KID_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():  # its memory warning is about feature buffers far larger than ours
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=extractor, subsets=KID_SUBSETS, subset_size=subset).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for x in _batches(images, batch_size, device):
            fid.update(x, real=is_real)
            kid.update(x, real=is_real)
    torch.manual_seed(seed)  # KID draws its subsets with the global generator
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid_mean": kid_mean.item(), "kid_std": kid_std.item()}


def quality_metrics(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500,
                    seed: int = 0) -> dict[str, float]:
    """fid, kid_mean, kid_std, precision, recall of generated images against real ones."""
    metrics = fid_kid(extractor, real, fake, batch_size, seed)
    metrics["precision"], metrics["recall"] = precision_recall(extract(extractor, real, batch_size),
                                                               extract(extractor, fake, batch_size))
    return metrics


def real_halves(real: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of the real images."""
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    return real[order[:half]], real[order[half : 2 * half]]


def floor_metrics(extractor: nn.Module, real: torch.Tensor, batch_size: int = 500, seed: int = 0) -> dict[str, float]:
    """fid_floor and kid_floor: real against real, on two disjoint halves of the real data."""
    a, b = real_halves(real, seed)
    check_sample_count(len(a), extractor.num_features, "each half of the real data (for the real-vs-real floor)")
    m = fid_kid(extractor, a, b, batch_size, seed)
    return {"fid_floor": m["fid"], "kid_floor": m["kid_mean"]}
