"""The real images an evaluation scores a model against, at the model's own resolution, and which split each is.

The FID/KID reference is the data set's held-out split (mnist5k's fixed 1,000, digits' fixed 400, torchvision's
test sets): no model and no feature extractor trains on it. Scores against the model's train split are logged
beside (`<metric>_train`); the plain names are against the held-out split. A digits model trained before digits
had a held-out split (its logged train split is larger than today's) is evaluated on the splits it trained with
and against its train split, as before; param `reference` says which split the headline is against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from dmat import tracking
from dmat.config import TrainConfig, dataset_kind
from dmat.config.datasets import check_run_dataset
from dmat.config.evaluation import EvalConfig
from dmat.data import load_held_out, load_splits
from dmat.evaluation import features, quality, spaces

log = logging.getLogger(__name__)


def images_of(ds) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(len(ds))])


@dataclass
class RealData:
    """A model's real images at its own resolution: its train split (what it learned from), its validation
    split (epsilon errors) and the data set's held-out split, which no model trains on, where there is one."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None

    @property
    def references(self) -> dict[str, torch.Tensor]:
        """The FID/KID references: the train split, and the held-out split where there is one."""
        return {"train": self.train, **({"heldout": self.test} if self.test is not None else {})}

    @property
    def headline(self) -> str:
        """The reference of the plain `fid`/`kid`: held-out where it exists (memorisation cannot pass as quality)."""
        return "heldout" if self.test is not None else "train"

    @property
    def unseen(self) -> torch.Tensor:
        """Real images no model trained on, for the memorisation check: the held-out split, else validation."""
        return self.test if self.test is not None else self.val

    def params(self) -> dict[str, str]:
        """Which real images each part used, as logged params."""
        held_out = self.test is not None
        return {"reference": self.headline,
                "real_data": f"{'held-out' if held_out else 'train'} split ({len(self.references[self.headline])} images)",
                "held_out_data": "validation split",
                "unseen_data": f"{'held-out' if held_out else 'validation'} split ({len(self.unseen)} images)"}


def _logged_train_images(run_id: str) -> int | None:
    """The size of the train split a model run logged as its dataset input, None when it logged none."""
    for dataset_input in tracking.get_run(run_id).inputs.dataset_inputs:
        profile = json.loads(dataset_input.dataset.profile or "{}")
        if profile.get("split") == "train":
            return int(profile["num_images"])
    return None


def trained_before_held_out(loaded: tracking.LoadedModel, train_split_size: int) -> bool:
    """A digits model trained on all 1,797 digits, before its held-out split existed: the train split it logged
    as its dataset input is not today's. (A run that logged none, as before dmat logged dataset inputs, cannot
    tell and is taken at today's splits.)"""
    if dataset_kind(loaded.tags[tracking.DATASET]) != "digits":
        return False
    logged = _logged_train_images(loaded.run_id)
    return logged is not None and logged != train_split_size


def model_data(loaded: tracking.LoadedModel) -> RealData:
    """The model's own splits (the split settings it trained with) and its data set's held-out split."""
    logged = tracking.config_from_params(TrainConfig, loaded.params)
    dataset, size = check_run_dataset(loaded.tags[tracking.DATASET], loaded.run_id), loaded.model.config.image_size
    if dataset_kind(dataset) == "folder":
        log.warning(f"note: model {loaded.run_id} is scored against the images in {dataset[len('folder:'):]}")
    split_cfg = TrainConfig(dataset=dataset, image_size=size, val_fraction=logged.val_fraction,
                            split_seed=logged.split_seed)
    splits = load_splits(split_cfg)
    if trained_before_held_out(loaded, len(splits.train)):
        log.warning(f"note: model {loaded.run_id} trained on all of {dataset}, before its held-out split existed: "
                    "it is scored against its train split, as then")
        splits = load_splits(split_cfg, with_held_out=True)
        return RealData(images_of(splits.train), images_of(splits.val), None)
    held_out = load_held_out(dataset, size)
    return RealData(images_of(splits.train), images_of(splits.val), None if held_out is None else images_of(held_out))


def quality_n(cfg: EvalConfig, loaded, data: RealData, extractor_run_id: str | None, inception_weights) -> int:
    """N of every FID/KID, checked against the feature dimension before any extractor is loaded or trained."""
    if cfg.features == "inception":
        features.inception_weights_path(inception_weights)  # a missing file first: more samples would not help
    dim = max(features.planned_feature_dim(cfg.features, loaded.tags[tracking.DATASET], loaded.model.config.image_size,
                                           extractor_run_id), spaces.RANDCNN_DIM)
    n = quality.matched_n(cfg.num_samples, [len(r) for r in data.references.values()])
    sizes = ", ".join(f"{name} {len(r)}" for name, r in data.references.items())
    quality.check_sample_count(n, dim, f"N = min(num-samples={cfg.num_samples}, half of each real reference: {sizes})")
    return n
