"""The two feature spaces every evaluation scores FID/KID/precision/recall in, and which one is the headline.

* `classifier` (or `inception`, --features): the penultimate features of a digit classifier trained on the data
  set (features.py). They tell digits apart, and a classifier is trained to ignore exactly what makes a sample
  look grainy or soft: real images plus Gaussian noise of sigma 0.1 score like the data in it.
* `randcnn`: a randomly initialised CNN with fixed weights (seeded, never trained), its ReLU feature maps at three
  depths averaged over positions (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models", recommend
  random embeddings for domains without ImageNet-like data). Random 3x3 filters respond to local structure —
  stroke edges, their sharpness, pixel noise — so it sees noise, blur and texture that the classifier does not,
  and since it is trained on nothing it holds no data set's images (no extractor-reference leak).

The headline (plain `fid`, `kid`, `precision`, `recall` and the steps grid) is HEADLINE_SPACE = randcnn: the
sensitivity check (sensitivity.py) measures that it detects sigma 0.1 noise on digits and mnist5k, which the
classifier's space does not. Every score is also logged under its space's name (`kid_randcnn`,
`kid_classifier_floor_sd_heldout`, ...), so the two are shown side by side; param `headline_space` names it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmat.config import metrics

HEADLINE_SPACE = metrics.HEADLINE_SPACE  # randcnn; the names are declared with the metrics (the report reads them)
RANDCNN_SEED, RANDCNN_WIDTH, RANDCNN_DIM = 0, 64, 64
SPACE_METRICS = metrics.SPACE_METRICS  # logged once per space
in_space = metrics.in_space  # kid -> kid_randcnn


class RandomCNNFeatures(nn.Module):
    """Three 3x3 convolutions with ReLU (stride 1, 2, 2) and He-normal weights drawn from a generator seeded with
    `seed` (the same numbers on every machine and torch version). The features [n, dim] are the position-averaged
    activations of a third of `dim` channels of each layer: the first layer's see pixel noise and edge sharpness
    at full resolution, the later ones strokes and their layout (on digits, multi-scale features detect sigma
    0.1 noise at KID z ~6 where the last layer's alone reach ~2)."""

    def __init__(self, in_channels: int, seed: int = RANDCNN_SEED, width: int = RANDCNN_WIDTH, dim: int = RANDCNN_DIM):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def conv(cin: int, cout: int) -> nn.Parameter:
            weight = torch.randn(cout, cin, 3, 3, generator=generator) * math.sqrt(2 / (cin * 9))
            return nn.Parameter(weight, requires_grad=False)

        self.weights = nn.ParameterList([conv(in_channels, width), conv(width, width), conv(width, width)])
        self.per_layer = (dim // 3, dim // 3, dim - 2 * (dim // 3))  # channels of each layer in the features
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, pooled = x.float(), []
        for weight, stride, keep in zip(self.weights, (1, 2, 2), self.per_layer):
            h = F.relu(F.conv2d(h, weight, padding=1, stride=stride))
            pooled.append(h[:, :keep].mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


def named(scores: dict[str, float], space: str, headline: bool) -> dict[str, float]:
    """`scores` under their space's names, and under the plain names too when `space` is the headline."""
    return {**{in_space(k, space): v for k, v in scores.items()}, **(scores if headline else {})}
