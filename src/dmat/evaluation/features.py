"""The fixed feature extractors that FID, KID and precision/recall are computed in.

There are no Inception weights offline for the bundled digits, so the default extractor is a small
CNN classifier trained once per data set and image size on the train split (its accuracy on the
validation split tells how meaningful its features are). It is logged as its own run
(dmat.role=feature-extractor) and every later evaluation of that data set and size reuses it, so all
models of a study are compared in the same feature space. `--features inception` uses the standard
Inception-v3 FID features of torch-fidelity, from a local weights file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from dmat import tracking
from dmat.config import TrainConfig, dataset_kind
from dmat.data import load_dataset, loader, split
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.tracking import claims

CHECKPOINT = "feature_extractor.pt"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name
INCEPTION_ENV = "DMAT_INCEPTION_WEIGHTS"
HELD_OUT_EXCLUDED = "held_out_excluded"  # param of an extractor trained without the held-out split (the reference)


@dataclass(frozen=True)
class ExtractorConfig:
    in_channels: int = 1
    image_size: int = 16
    num_classes: int = 10
    feature_dim: int = 64  # well below the 2000 generated samples, so the covariances are full rank
    width: int = 32


class ClassifierFeatures(nn.Module):
    """A small CNN classifier; `forward` returns its penultimate features (what FID is computed on)."""

    def __init__(self, config: ExtractorConfig):
        super().__init__()
        self.config = config
        self.num_features = config.feature_dim  # read by torchmetrics instead of probing with a 299px image
        w = config.width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.body = nn.Sequential(
            *block(config.in_channels, w), *block(w, w), nn.AvgPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * w, config.feature_dim),
        )
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.body(x)))


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 pool features (2048-d) for images in [-1, 1] with 1 or 3 channels."""

    num_features = 2048

    def __init__(self, weights: Path):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        torch.load(weights, map_location="cpu", weights_only=True)  # refuse anything but plain tensors first
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(images.expand(-1, 3, -1, -1))[0]


def inception_weights_path(path: str | None = None) -> Path:
    """The Inception weights file: the given path, else $DMAT_INCEPTION_WEIGHTS, else torch's hub cache."""
    chosen = Path(path or os.environ.get(INCEPTION_ENV) or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)
    if not chosen.is_file():
        raise DmatError(
            f"Inception weights {chosen} not found (no download offline): put torch-fidelity's {INCEPTION_FILE} "
            f"there, or pass --inception-weights PATH / set {INCEPTION_ENV}; or use --features classifier"
        )
    return chosen


def labelled_dataset(dataset: str, image_size: int) -> Dataset:
    """The data set as (image, label) pairs, in the same order as `load_dataset` (so splits agree): its held-out
    split left out, so that the extractor never sees the evaluations' reference."""
    return load_dataset(dataset, image_size).base


def _num_classes(ds: Dataset) -> int:
    labels = ds.tensors[1] if isinstance(ds, TensorDataset) else torch.as_tensor(ds.targets)
    return int(labels.max()) + 1


@contextlib.contextmanager
def _own_run_outside_project_run(experiment: str | None):
    """Inside `mlflow run` MLFLOW_RUN_ID names the evaluation run; the extractor gets a run of its own,
    in the evaluation's experiment unless one is named. Yields the experiment name to use."""
    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        if saved and not experiment:
            experiment = mlflow.get_experiment(tracking.get_run(saved).info.experiment_id).name
        yield experiment
    finally:
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


@torch.no_grad()
def accuracy(net: ClassifierFeatures, data, device) -> float:
    net.eval()
    correct = total = 0
    for x, y in data:
        correct += (net.classify(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / total


def train_feature_extractor(dataset: str, image_size: int, epochs: int = 15, feature_dim: int = 64,
                            device: str | torch.device = "cpu", seed: int = 0, experiment: str | None = None,
                            claim: bool = False) -> str:
    """Train the classifier on the train split, log it as a feature-extractor run; returns the run id. With
    `claim`, one that another process started first for this data set and size is left to it (ClaimedElsewhere)."""
    split_cfg = TrainConfig(dataset=dataset)
    full = labelled_dataset(dataset, image_size)
    train, val = split(full, split_cfg.val_fraction, split_cfg.split_seed)
    x0 = train[0][0]
    config = ExtractorConfig(in_channels=x0.shape[0], image_size=image_size, num_classes=_num_classes(full),
                             feature_dim=feature_dim)
    if config.num_classes < 2:
        raise DmatError(f"dataset {dataset} has a single class: the classifier feature extractor needs labels")
    torch.manual_seed(seed)
    net = ClassifierFeatures(config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    train_loader = loader(train, 128, shuffle=True, seed=seed)
    val_loader = loader(val, 256, shuffle=False)
    with _own_run_outside_project_run(experiment) as experiment:
        tags = {tracking.ROLE: tracking.FEATURE_EXTRACTOR, tracking.DATASET: dataset, tracking.IMAGE_SIZE: str(image_size)}
        work = claims.claim_key(tracking.FEATURE_EXTRACTOR, dataset, image_size) if claim else None
        with tracking.tracked_run(f"features-{dataset}-{image_size}px", tags, experiment, claim=work) as run:
            mlflow.log_params({**asdict(config), "epochs": epochs, "seed": seed, "trained_on": "train split",
                               HELD_OUT_EXCLUDED: "true"})
            for epoch in tqdm(range(1, epochs + 1), desc="feature extractor", unit="epoch", dynamic_ncols=True):
                net.train()
                for x, y in train_loader:
                    loss = F.cross_entropy(net.classify(x.to(device)), y.to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                mlflow.log_metric("val_accuracy", accuracy(net, val_loader, device), step=epoch)
            mlflow.log_metric("feature_dim", feature_dim)  # val_accuracy: its last step is the final model
            tracking.save_checkpoint({"format": checkpoint.FORMAT, "extractor_config": asdict(config),
                                      "model": net.cpu().state_dict()}, CHECKPOINT)
            return run.info.run_id


def load_feature_extractor(run_id: str, dataset: str, image_size: int) -> ClassifierFeatures:
    """The extractor of a feature-extractor run, refusing one trained on another data set or size."""
    run = tracking.get_run(run_id)
    tags = run.data.tags
    tracking.require_role(run, tracking.FEATURE_EXTRACTOR, wanted="feature extractor")
    if (tags.get(tracking.DATASET), tags.get(tracking.IMAGE_SIZE)) != (dataset, str(image_size)):
        raise DmatError(
            f"feature extractor {run_id} was trained on {tags.get(tracking.DATASET)} at "
            f"{tags.get(tracking.IMAGE_SIZE)}px, but the model is {dataset} at {image_size}px: "
            "give an extractor of the model's data set and size, or leave it out to use (or train) one"
        )
    ckpt = tracking.load_checkpoint(run_id, CHECKPOINT)
    net = ClassifierFeatures(ExtractorConfig(**ckpt["extractor_config"]))
    net.load_state_dict(ckpt["model"])
    return net.eval().requires_grad_(False)


def saw_held_out(run) -> bool:
    """Whether a feature-extractor run trained on images of its data set's held-out split: a digits extractor
    trained before digits had one (it lacks the HELD_OUT_EXCLUDED param). mnist5k's and torchvision's held-out
    splits were always left out."""
    return (dataset_kind(run.data.tags.get(tracking.DATASET, "")) == "digits"
            and tracking.param_value(run.data.params, HELD_OUT_EXCLUDED) != "true")


def _newest_extractor(dataset: str, image_size: int) -> str | None:
    """The newest extractor of this data set and size that never saw its held-out split."""
    found = tracking.find_runs(tracking.FEATURE_EXTRACTOR, {tracking.DATASET: dataset, tracking.IMAGE_SIZE: str(image_size)})
    return next((run.info.run_id for run in found if not saw_held_out(run)), None)


def planned_feature_dim(kind: str, dataset: str, image_size: int, run_id: str | None = None) -> int:
    """The dimension the evaluation's features will have, known before any extractor is loaded or trained,
    so that a sample count too small for it is refused before anything is trained or logged."""
    if kind == "inception":
        return InceptionFeatures.num_features
    run_id = run_id or _newest_extractor(dataset, image_size)
    logged = tracking.param_value(tracking.get_run(run_id).data.params, "feature_dim") if run_id else None
    return int(float(logged)) if logged else ExtractorConfig.feature_dim


def feature_extractor_for(dataset: str, image_size: int, run_id: str | None = None, device="cpu",
                          experiment: str | None = None) -> tuple[str, ClassifierFeatures]:
    """The given extractor run, else the newest one of this data set and size, else a newly trained one (or the
    one another process is training for them: waited for)."""
    while not run_id:
        try:
            run_id = _newest_extractor(dataset, image_size) or train_feature_extractor(
                dataset, image_size, device=device, experiment=experiment, claim=True)
        except claims.ClaimedElsewhere as held:
            tqdm.write(f"waiting for feature extractor {held.run_id}, which another process is training")
            run_id = held.run_id if claims.wait_for(held.run_id) else None  # it failed: train one here
    return run_id, load_feature_extractor(run_id, dataset, image_size).to(device)
