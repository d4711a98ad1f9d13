"""Data sets as tensors in [-1, 1], with one deterministic train/validation split.

`digits` (scikit-learn's bundled 8x8 digits, upsampled) needs no download and is the default.
`mnist`, `fashion-mnist` and `cifar10` use torchvision's own dataset classes on their on-disk
formats; `folder:PATH` reads an ImageFolder tree. Everything is verified before a run starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split

from dmat.config import TrainConfig, dataset_kind, preset_for
from dmat.errors import DmatError


def data_root() -> Path:
    """Where torchvision data sets live: $DMAT_DATA_DIR, else ./data."""
    return Path(os.environ.get("DMAT_DATA_DIR", "data"))


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    image_size: int
    channels: int


class ImagesOnly(Dataset):
    """Drops labels so that every data set yields image tensors alone."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return item[0] if isinstance(item, (tuple, list)) else item


def _digits(image_size: int) -> Dataset:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return TensorDataset(images.clamp(0, 1) * 2 - 1)


def _transform(image_size: int, channels: int):
    from torchvision import transforms

    steps = [transforms.Grayscale(1)] if channels == 1 else [transforms.Lambda(lambda im: im.convert("RGB"))]
    steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    return transforms.Compose(steps + [transforms.Normalize([0.5] * channels, [0.5] * channels)])


def _cifar10_class():
    """torchvision's CIFAR-10 reader, trusting files already on disk.

    torchvision checks each batch file's md5 even when nothing is downloaded; that check belongs to
    the download (whose archive md5 is still checked), and it rejects any re-packed copy.
    """
    from torchvision import datasets

    class CIFAR10(datasets.CIFAR10):
        train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
        meta = {**datasets.CIFAR10.meta, "md5": None}

    return CIFAR10


def _torchvision(kind: str, image_size: int, channels: int) -> Dataset:
    from torchvision import datasets

    classes = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": _cifar10_class()}
    root = data_root()
    cls = classes[kind]
    transform = _transform(image_size, channels)
    try:
        return cls(root, train=True, download=False, transform=transform)
    except RuntimeError:
        pass
    try:
        return cls(root, train=True, download=True, transform=transform)
    except Exception as exc:  # offline: say where the files go
        where = root / ("cifar-10-batches-py" if kind == "cifar10" else f"{cls.__name__}/raw")
        raise DmatError(
            f"{kind} is not on disk and could not be downloaded ({type(exc).__name__}): "
            f"put the original files in {where} (or set DMAT_DATA_DIR)"
        ) from None


def _folder(path: str, image_size: int, channels: int) -> Dataset:
    from torchvision import datasets

    if not Path(path).is_dir():
        raise DmatError(f"image folder {path} does not exist: give folder:PATH with class subfolders of images")
    try:
        return datasets.ImageFolder(path, transform=_transform(image_size, channels))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DmatError(f"image folder {path} holds no images in class subfolders (ImageFolder layout): {exc}") from None


def load_dataset(dataset: str, image_size: int) -> Dataset:
    """The full training set of `dataset` as images in [-1, 1] at `image_size`."""
    kind, preset = dataset_kind(dataset), preset_for(dataset)
    if kind == "digits":
        return ImagesOnly(_digits(image_size))
    if kind == "folder":
        return ImagesOnly(_folder(dataset.split(":", 1)[1], image_size, preset.channels))
    return ImagesOnly(_torchvision(kind, image_size, preset.channels))


def split(full: Dataset, val_fraction: float, split_seed: int) -> tuple[Subset, Subset]:
    n_val = max(1, int(round(len(full) * val_fraction)))
    return tuple(random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(split_seed)))


def load_splits(cfg: TrainConfig) -> DataSplits:
    """Load, split and verify the data set of a run before any training starts."""
    size, channels = cfg.resolved_image_size(), cfg.channels
    full = load_dataset(cfg.dataset, size)
    if len(full) < 2:
        raise DmatError(f"dataset {cfg.dataset} has {len(full)} images: at least 2 are needed")
    train, val = split(full, cfg.val_fraction, cfg.split_seed)
    verify(train[0], size, channels, cfg.dataset)
    return DataSplits(train=train, val=val, image_size=size, channels=channels)


def verify(image: torch.Tensor, image_size: int, channels: int, name: str) -> None:
    expected = (channels, image_size, image_size)
    if tuple(image.shape) != expected:
        raise DmatError(f"dataset {name} yields images of shape {tuple(image.shape)}, expected {expected}")
    if image.min() < -1.0001 or image.max() > 1.0001:
        raise DmatError(f"dataset {name} yields values outside [-1, 1]: check its normalisation")


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0, sampler=None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
    )

