"""Where code runs and how it is seeded: shared by training and evaluation, importing neither."""

from __future__ import annotations

import random

import torch

from dmat import distributed
from dmat.errors import DmatError


def resolve_device(name: str) -> torch.device:
    """CUDA > MPS > CPU when `name` is "auto"; otherwise exactly the device asked for."""
    if name == "auto":
        if torch.cuda.is_available():
            return distributed.local_device(torch.device("cuda"))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmatError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmatError("device cuda was asked for but CUDA is not available: use --device cpu or auto")
    return distributed.local_device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (initial weights, data order, dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)
