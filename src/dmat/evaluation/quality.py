"""Sample quality against real data, compared like with like: FID and KID (torchmetrics), precision/recall.

Everything is computed on feature vectors of one fixed extractor (evaluation/features.py), extracted
once per image. FID is biased by the sample count (it shrinks as N grows), so a score compared with the
real-vs-real floor must use the floor's sample sizes, and one split of the real data is one noisy
draw. Hence, for a real reference set R and generated samples G, with N per side:

    draw k = 1..K:  A_k, B_k = two disjoint random sets of N images of R;  G_k = N random images of G
                    model_k  = metric(G_k, B_k)      (N generated vs N real)
                    floor_k  = metric(A_k, B_k)      (N real vs N other real)

and both are reported as mean and sd over the draws (`fid`, `fid_sd`, `fid_floor`, `fid_floor_sd`;
`kid`, ...). An evaluation's floor is estimated from far more draws than its scores (floor.py: an sd from 10
draws can be off several-fold), computed once per reference, extractor, N and seed and cached.
N = min(generated, |R| // 2 for every reference), so every FID and KID of one evaluation
uses the same N, logged as `quality_n`. KID is the unbiased MMD^2 with the cubic polynomial kernel over
all N x N pairs (torchmetrics with one subset of size N): unbiased at any N, it is the headline
comparison; FID stays beside it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel

from dmat.errors import DmatError

PR_NEIGHBOURS = 3  # k of Kynkaanniemi et al. 2019
METRICS = ("fid", "kid")


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


def matched_n(num_generated: int, reference_sizes) -> int:
    """N of every FID/KID of an evaluation: the generated count, capped so that two disjoint sets of N fit
    in every real reference (the floor needs A and B)."""
    return min(num_generated, *(size // 2 for size in reference_sizes))


class _Given(nn.Module):
    """Identity on feature vectors, so torchmetrics' FID and KID run on features extracted once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.inference_mode()
def fid_kid(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """FID and unbiased KID between two sets of feature vectors [n, d] (all pairs: one KID subset of the
    smaller n), through torchmetrics."""
    dim = real.shape[1]
    with warnings.catch_warnings():  # its memory warning is about feature buffers far larger than ours
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(dim), subsets=1, subset_size=min(len(real), len(fake)))
    for features, is_real in ((real.double(), True), (fake.double(), False)):
        kid.update(features, real=is_real)
    fid_value = _fid(real, fake)  # checks the sample counts first
    with torch.random.fork_rng(devices=[]):  # KID permutes its one subset (= all rows) with the global generator:
        torch.manual_seed(0)  # fixed, so the summation order and the last bits repeat, and no caller's stream moves
        kid_value = kid.compute()[0].item()
    return {"fid": fid_value, "kid": kid_value}


@torch.inference_mode()
def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two sets of feature vectors [n, d], through torchmetrics."""
    dim = real.shape[1]
    check_sample_count(len(real), dim, "the real set")
    check_sample_count(len(fake), dim, "the generated set")
    fid = FrechetInceptionDistance(feature=_Given(dim))
    for features, is_real in ((real.double(), True), (fake.double(), False)):
        fid.update(features, real=is_real)
    return fid.compute().item()


@dataclass(frozen=True)
class Draw:
    """Row indices of one draw: `a`, `b` disjoint in the reference, `g` in the generated set (each N long)."""

    a: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor


def draws(num_reference: int, num_generated: int, n: int, k: int, seed: int) -> list[Draw]:
    """The K draws of the module docstring, fixed by `seed` (the same for every model of a study)."""
    if 2 * n > num_reference or n > num_generated:
        raise DmatError(f"a draw of N={n} needs {2 * n} reference and {n} generated images, "
                        f"got {num_reference} and {num_generated}")
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        order = torch.randperm(num_reference, generator=generator)
        out.append(Draw(order[:n], order[n : 2 * n], torch.randperm(num_generated, generator=generator)[:n]))
    return out


def _kid_of_draws(reference: torch.Tensor, found: list[Draw], rows: int = 1024) -> list[float]:
    """Unbiased KID of each draw's A against its B with torchmetrics' cubic kernel and estimator, from one pass over
    the reference's kernel matrix in blocks of `rows` rows: each block times the draws' 0/1 membership columns U
    sums every draw's blocks at once (U'KU), so K draws cost about one kernel of the reference, not 3K of N x N."""
    n, members = len(found[0].a), torch.zeros(len(reference), 2 * len(found), dtype=torch.float64)
    for i, d in enumerate(found):
        members[d.a, 2 * i], members[d.b, 2 * i + 1] = 1.0, 1.0
    sums = torch.zeros(2 * len(found), 2 * len(found), dtype=torch.float64)
    diagonal = torch.zeros(2 * len(found), dtype=torch.float64)
    for start in range(0, len(reference), rows):
        block = poly_kernel(reference[start : start + rows], reference)
        sums += members[start : start + rows].T @ (block @ members)
        diagonal += block.diagonal(offset=start) @ members[start : start + rows]
    within = (sums.diagonal() - diagonal).reshape(-1, 2).sum(1) / (n * (n - 1))  # pairs inside A and inside B
    return (within - 2 * sums.diagonal(offset=1)[::2] / n**2).tolist()


def kid_floor_values(reference: torch.Tensor, n: int, k: int, seed: int) -> list[float]:
    """KID of N real vs N other real reference rows in each of K draws fixed by `seed` (A, B of `draws`), all
    from one kernel matrix; each equals fid_kid(B, A)["kid"] (test_floor)."""
    return _kid_of_draws(reference.double(), draws(len(reference), n, n, k, seed))


def floor_values(reference: torch.Tensor, n: int, k: int, seed: int) -> dict[str, list[float]]:
    """fid_floor and kid_floor of each of K draws of two disjoint sets A, B of N reference rows (N real vs N other
    real), the draws fixed by `seed`: the per-draw values the floor's mean and sd summarise."""
    found = draws(len(reference), n, n, k, seed)
    return {"fid_floor": [_fid(reference[d.b], reference[d.a]) for d in found],
            "kid_floor": kid_floor_values(reference, n, k, seed)}


def summarised(per_draw: dict[str, list[float]]) -> dict[str, float]:
    """Each per-draw series as `<name>` (its mean) and `<name>_sd` (its sample sd)."""
    out = {}
    for name, values in per_draw.items():
        out[name], out[f"{name}_sd"] = _mean_sd(values)
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return v.mean().item(), (v.std().item() if len(v) > 1 else float("nan"))


def matched_scores(generated: torch.Tensor, reference: torch.Tensor, n: int, k: int, seed: int,
                   floor: bool = True, paired: bool = False) -> dict[str, float]:
    """fid, kid (N generated vs N real) and fid_floor, kid_floor (N real vs N other real), each as the
    mean over K draws with `<name>_sd` its sample sd over the draws; inputs are feature vectors.

    Without `floor`, only the model's scores: the floor depends on the real sets and the seed alone, so a
    second set of samples scored against the same draws (another step count) shares the first one's floor.
    `paired`: `generated` is the reference's own images, each changed (row i of one = row i of the other), and
    draw k scores the changed A_k against B_k: the floor's own pairs, one side changed (sensitivity.py)."""
    if paired and len(generated) != len(reference):
        raise DmatError(f"paired scores need one generated image per reference image, got {len(generated)} "
                        f"and {len(reference)}")
    per_draw = {name: [] for m in METRICS for name in ((m, f"{m}_floor") if floor else (m,))}
    for d in draws(len(reference), len(generated), n, k, seed):
        model = fid_kid(reference[d.b], generated[d.a if paired else d.g])
        real = fid_kid(reference[d.b], reference[d.a]) if floor else {}
        for m in METRICS:
            per_draw[m].append(model[m])
            if floor:
                per_draw[f"{m}_floor"].append(real[m])
    return summarised(per_draw)


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


def quality_metrics(generated: torch.Tensor, references: dict[str, torch.Tensor], headline: str, n: int, k: int,
                    seed: int, floors: dict[str, dict[str, float]]) -> dict[str, float]:
    """Matched-N scores over K draws against each real reference beside that reference's floor (`floors`: its
    fid_floor, fid_floor_sd, kid_floor, kid_floor_sd, floor.py), as `<name>_<reference>` (e.g. kid_heldout,
    fid_floor_sd_train), the `headline` reference's also under the plain names (kid, fid_floor, ...); `quality_n`
    (N) and `quality_draws` (K); precision and recall of N generated vs N real on the headline's first draw."""
    out: dict[str, float] = {"quality_n": n, "quality_draws": k}
    for name, reference in references.items():
        scores = {**matched_scores(generated, reference, n, k, seed, floor=False), **floors[name]}
        out.update({f"{metric}_{name}": value for metric, value in scores.items()})
        if name == headline:
            out.update(scores)
    first = draws(len(references[headline]), len(generated), n, 1, seed)[0]
    out["precision"], out["recall"] = precision_recall(references[headline][first.b], generated[first.g])
    return out
