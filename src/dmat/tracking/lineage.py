"""Where a run's inputs come from: the images it saw, as MLflow datasets, and the code, as a git commit.

Every training run logs its train and validation splits, every evaluation run the real images it uses,
with `mlflow.log_inputs`, so the UI's Datasets column shows what each model saw. A dataset's digest is a
hash of the image tensors themselves (float32 bytes, in order), so runs on different data (another split
seed, resolution or file) differ in digest even under one name: an evaluation reads a model's data only
where its run logged it, and uses it only at the logged digest (dmat.evaluation.real_data). The pipeline
reuses a finished stage only at the same git commit of a clean checkout (`Source`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import mlflow
import numpy as np
import torch
from mlflow.data.dataset import Dataset as MlflowDataset
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.schema import TensorDatasetSchema
from mlflow.types import Schema, TensorSpec
from torch.utils.data import Dataset

from dmat import tracking
from dmat.config import TrainConfig, dataset_kind
from dmat.data import DataSplits, data_root, loader, mnist5k_file

DIGEST_CHARS = 16  # of the sha256: MLflow stores at most 36
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


class ImageSet(MlflowDataset):
    """A split of a data set as MLflow sees it: name, digest of its tensors, source, and a profile with the
    split and its size (the images themselves are not stored)."""

    def __init__(self, name: str, digest: str, source, shape: tuple[int, ...], profile: dict):
        self._shape, self._profile = shape, profile
        super().__init__(source=source, name=name, digest=digest)

    def _compute_digest(self) -> str:
        return self._digest

    @property
    def profile(self) -> dict:
        return self._profile

    @property
    def schema(self) -> TensorDatasetSchema:
        return TensorDatasetSchema(features=Schema([TensorSpec(np.dtype(np.float32), (-1, *self._shape), "image")]))

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "schema": json.dumps(self.schema.to_dict()), "profile": json.dumps(self.profile)}


def digest(batches: Iterable[torch.Tensor]) -> str:
    """sha256 of the images' float32 bytes in order (batching does not change it)."""
    sha = hashlib.sha256()
    for batch in batches:
        sha.update(batch.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return sha.hexdigest()[:DIGEST_CHARS]


def source_path(dataset: str) -> Path:
    """The file or folder the images are read from."""
    kind = dataset_kind(dataset)
    if kind == "digits":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if kind == "mnist5k":
        return mnist5k_file()
    if kind == "folder":
        return Path(dataset.split(":", 1)[1]).resolve()
    return (data_root() / TORCHVISION_FOLDERS[kind]).resolve()


def split_name(dataset: str, image_size: int, split: str) -> str:
    """The name a split is logged under: `<dataset>-<size>px-<split>`."""
    return f"{dataset}-{image_size}px-{split}"


def image_set(dataset: str, image_size: int, split: str, images: Dataset | torch.Tensor, **details) -> ImageSet:
    """One split as an MLflow dataset named `<dataset>-<size>px-<split>`, its digest read from the tensors."""
    batches = images.split(512) if isinstance(images, torch.Tensor) else loader(images, 512, shuffle=False)
    first = images[0]
    with warnings.catch_warnings():  # MLflow registers its local-file source under two schemes and says so
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(source_path(dataset)))
    profile = {"split": split, "num_images": len(images), "image_shape": list(first.shape), **details}
    return ImageSet(split_name(dataset, image_size, split), digest(batches), source, tuple(first.shape), profile)


def log_training_data(train: TrainConfig, splits: DataSplits) -> None:
    """The active training run's train and validation splits, as its dataset inputs."""
    how = {"val_fraction": train.val_fraction, "split_seed": train.split_seed}
    sets = [image_set(train.dataset, splits.image_size, name, part, **how)
            for name, part in (("train", splits.train), ("validation", splits.val))]
    mlflow.log_inputs(datasets=sets, contexts=["training", "validation"],
                      tags_list=[{"split": s.profile["split"]} for s in sets])


def log_evaluation_data(dataset: str, image_size: int, train: torch.Tensor, validation: torch.Tensor,
                        held_out: torch.Tensor | None = None) -> None:
    """The active evaluation run's real images: the FID/KID references (train split, held-out split where the
    data set has one) and the validation split (epsilon errors)."""
    parts = {"train": ("reference", train), "validation": ("validation", validation)}
    if held_out is not None:
        parts["held-out"] = ("reference", held_out)
    sets = [image_set(dataset, image_size, split, tensor) for split, (_, tensor) in parts.items()]
    mlflow.log_inputs(datasets=sets, contexts=[context for context, _ in parts.values()],
                      tags_list=[{"split": split} for split in parts])


@dataclass(frozen=True)
class LoggedSplit:
    """A split as a run logged it among its dataset inputs: its name, the digest of its images and their count."""

    name: str
    digest: str
    num_images: int


def logged_splits(run_id: str) -> dict[str, LoggedSplit]:
    """The splits a run logged as its dataset inputs, by split ("train", "validation", ...); none before dmat
    logged dataset inputs."""
    splits = {}
    for given in tracking.get_run(run_id).inputs.dataset_inputs:
        profile = json.loads(given.dataset.profile or "{}")
        if "split" in profile:
            splits[profile["split"]] = LoggedSplit(given.dataset.name, given.dataset.digest, int(profile["num_images"]))
    return splits


@dataclass(frozen=True)
class Source:
    """The code a pipeline stage runs: the checkout's commit (None: not a git checkout) and whether it has
    uncommitted changes. `any_commit` (--reuse-any-commit) matches finished stages on params alone."""

    commit: str | None
    dirty: bool = False
    any_commit: bool = False

    @classmethod
    def of(cls, folder: Path, any_commit: bool = False) -> Source:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                                  timeout=60).stdout.strip()

        try:
            return cls(git("rev-parse", "HEAD"), bool(git("status", "--porcelain")), any_commit)
        except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: params alone, as before
            return cls(None, False, any_commit)

    @property
    def reuse_tags(self) -> dict[str, str] | None:
        """The tags a finished stage needs to be reused; None: nothing may be (a dirty tree is no commit)."""
        if self.any_commit or self.commit is None:
            return {}
        return None if self.dirty else {tracking.GIT_COMMIT: self.commit, tracking.SOURCE_DIRTY: "false"}

    @property
    def run_tags(self) -> dict[str, str]:
        """What a stage run is tagged with besides MLflow's commit tag: whether the tree was dirty."""
        return {tracking.SOURCE_DIRTY: tracking.encode_param(self.dirty)} if self.commit else {}
