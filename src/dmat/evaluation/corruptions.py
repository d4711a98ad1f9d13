"""Known, graded corruptions of real images, for the sensitivity check (sensitivity.py): what a metric should see.

Each takes images [n, C, H, W] in [-1, 1] (and their class labels), a level and a seed, and returns as many
images, still in [-1, 1]:

* noise: Gaussian noise of sd `level` in [-1, 1] units (a grainy generator), clamped to [-1, 1]
* blur: Gaussian blur of sd `level` px (a soft generator)
* shift: every image moved by `level` px in a random direction, edge pixels repeated (a misplaced generator)
* class_mix: a share `level` of the images of the upper half of the classes replaced by images of the lower half
  (a generator that favours some classes; 1 = the upper half never drawn), drawn from `donors` where given: other
  real images (the train split), never ones the corrupted set is scored against
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

LEVELS = {"noise": (0.02, 0.05, 0.1, 0.2, 0.3), "blur": (0.3, 0.5, 0.75, 1.0, 1.5), "shift": (1, 2, 3),
          "class_mix": (0.25, 0.5, 0.75, 1.0)}
UNITS = {"noise": "sd in [-1, 1] units", "blur": "sd in px", "shift": "px", "class_mix": "share of half the classes"}


def noise(images: torch.Tensor, labels: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + level * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def blur(images: torch.Tensor, labels: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    kernel = 2 * int(3 * level + 0.5) + 1  # three sd each side
    return gaussian_blur(images, kernel_size=kernel, sigma=float(level)).clamp(-1, 1)


def shift(images: torch.Tensor, labels: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    by, size = int(level), images.shape[-1]
    directions = torch.tensor([(0, by), (0, -by), (by, 0), (-by, 0)])
    chosen = directions[torch.randint(4, (len(images),), generator=torch.Generator().manual_seed(seed))]
    padded = F.pad(images, (by, by, by, by), mode="replicate")
    return torch.stack([padded[i, :, by + dy : by + dy + size, by + dx : by + dx + size]
                        for i, (dy, dx) in enumerate(chosen.tolist())])


def class_mix(images: torch.Tensor, labels: torch.Tensor, level: float, seed: int,
              donors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    pool, pool_labels = donors if donors is not None else (images, labels)
    classes = labels.unique()
    upper = torch.isin(labels, classes[len(classes) // 2 :])
    generator = torch.Generator().manual_seed(seed)
    replaced = torch.nonzero(upper).flatten()
    lower = torch.nonzero(~torch.isin(pool_labels, classes[len(classes) // 2 :])).flatten()
    replaced = replaced[torch.randperm(len(replaced), generator=generator)[: int(round(level * len(replaced)))]]
    out = images.clone()
    out[replaced] = pool[lower[torch.randint(len(lower), (len(replaced),), generator=generator)]]
    return out


CORRUPTIONS = {"noise": noise, "blur": blur, "shift": shift, "class_mix": class_mix}


def corrupt(kind: str, images: torch.Tensor, labels: torch.Tensor, level: float, seed: int = 0,
            donors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`images` under corruption `kind` at `level` (see the module docstring); `donors`: class_mix's pool."""
    if kind == "class_mix":
        return class_mix(images, labels, level, seed, donors)
    return CORRUPTIONS[kind](images, labels, level, seed)
