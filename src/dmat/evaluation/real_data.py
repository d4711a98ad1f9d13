"""The real images an evaluation scores a model against, at the model's own resolution, and which split each is.

The FID/KID reference is the data set's held-out split (mnist5k's fixed 1,000, digits' fixed 400, torchvision's
test sets): no model and no feature extractor trains on it. Scores against the model's train split are logged
beside (`<metric>_train`); the plain names are against the held-out split. A digits model trained before digits
had a held-out split (its logged train split is larger than today's) is evaluated on the splits it trained with
and against its train split, as before; param `reference` says which split the headline is against.

The data set is named by the model run's `dmat.dataset` tag, which anyone who can write to the store can change,
and an evaluation uploads real images (memorisation's nearest neighbours): so the images are read only when the
tag names the data the run logged as its inputs, and used only when their digest is the one it logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dmat import tracking
from dmat.config import TrainConfig, dataset_kind
from dmat.config.datasets import check_run_dataset
from dmat.config.evaluation import EvalConfig
from dmat.data import load_held_out, load_splits
from dmat.errors import DmatError
from dmat.evaluation import features, quality, spaces
from dmat.tracking import lineage

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


def trained_before_held_out(loaded: tracking.LoadedModel, val_split_size: int) -> bool:
    """A digits model trained on all 1,797 digits, before its held-out split existed: the validation split it
    logged as its dataset input is not today's. (Its validation split, not its train split: a lower-resolution
    student's train split holds teacher samples too. A run that logged none, as before dmat logged dataset inputs,
    cannot tell and is taken at today's splits.)"""
    if dataset_kind(loaded.tags[tracking.DATASET]) != "digits":
        return False
    logged = lineage.logged_splits(loaded.run_id).get("validation")
    return logged is not None and logged.num_images != val_split_size


def _trained_on(run_id: str, dataset: str, size: int) -> dict[str, lineage.LoggedSplit]:
    """The splits the model's run logged as its inputs, checked before any image is read: the run's dataset tag
    (which anyone who can write to the store can set) must name the data set they were logged under. A run
    from before dmat logged its inputs may name only a data set dmat ships or reads from its data folder."""
    logged = lineage.logged_splits(run_id)
    if not logged and dataset_kind(dataset) != "folder":
        return logged
    validation = logged.get("validation")
    if validation is None or validation.name != lineage.split_name(dataset, size, "validation"):
        inputs = "no dataset inputs" if validation is None else f"{validation.name!r} as its input"
        raise DmatError(f"model run {run_id} is tagged {tracking.DATASET}={dataset} at {size}px but logged {inputs}: "
                        "dmat evaluates a model only on the data its run logged that it trained on, and reads "
                        "no other")
    return logged


def _check_digests(run_id: str, logged: dict[str, lineage.LoggedSplit], train: torch.Tensor,
                   val: torch.Tensor) -> None:
    """The images read are the ones the run trained on (the digest of the tensors it logged): the validation split,
    which is real images in every run, and the train split unless the run trained on more than the real ones
    (a lower-resolution student's teacher samples)."""
    for split, images in (("validation", val), ("train", train)):
        want = logged.get(split)
        if want is None or (split == "train" and want.num_images != len(images)):
            continue
        if (got := lineage.digest(images.split(512))) != want.digest:
            raise DmatError(f"the {split} images of {want.name} are not the ones model run {run_id} logged that it "
                            f"trained on (digest {got}, logged {want.digest}): the data changed since, or the "
                            f"run's {tracking.DATASET} tag names other data; dmat does not evaluate it on them")


def model_data(loaded: tracking.LoadedModel) -> RealData:
    """The model's own splits (the split settings it trained with) and its data set's held-out split. Nothing is
    read before the run's dataset tag is found to name the data its run logged, and nothing is used before the
    images read are found to be those (a tag must not point an evaluation, which uploads images, at other files)."""
    logged_cfg = tracking.config_from_params(TrainConfig, loaded.params)
    dataset, size = check_run_dataset(loaded.tags[tracking.DATASET], loaded.run_id), loaded.model.config.image_size
    logged = _trained_on(loaded.run_id, dataset, size)
    split_cfg = TrainConfig(dataset=dataset, image_size=size, val_fraction=logged_cfg.val_fraction,
                            split_seed=logged_cfg.split_seed)
    splits = load_splits(split_cfg)
    before_held_out = trained_before_held_out(loaded, len(splits.val))
    if before_held_out:
        log.warning(f"note: model {loaded.run_id} trained on all of {dataset}, before its held-out split existed: "
                    "it is scored against its train split, as then")
        splits = load_splits(split_cfg, with_held_out=True)
    train, val = images_of(splits.train), images_of(splits.val)
    _check_digests(loaded.run_id, logged, train, val)
    if dataset_kind(dataset) == "folder":
        log.warning(f"note: model {loaded.run_id} is scored against the images in {dataset[len('folder:'):]}")
    held_out = None if before_held_out else load_held_out(dataset, size)
    return RealData(train, val, None if held_out is None else images_of(held_out))


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
