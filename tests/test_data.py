"""Data sets: the bundled digits, torchvision's on-disk formats written by the test, image folders.

No test here touches the network: the `no_network` fixture refuses (and records) every name lookup
and connection, so a result never depends on whether the machine is online.
"""

import gzip
import pickle
import socket
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dmat.config import TrainConfig
from dmat.data import load_dataset, load_held_out, load_splits
from dmat.errors import DmatError


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every host is unreachable; yields the list of attempts to reach one."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_digits_default_is_16px_in_range_with_a_fixed_disjoint_split():
    splits = load_splits(TrainConfig())
    assert splits.image_size == 16 and splits.channels == 1
    x = splits.train[0]
    assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert len(splits.train) + len(splits.val) == 1797 - 400  # a fixed 40 of each digit held out
    assert not set(splits.train.indices) & set(splits.val.indices)
    again = load_splits(TrainConfig(seed=5))  # the training seed does not move the held-out split
    assert again.val.indices == splits.val.indices
    other = load_splits(TrainConfig(split_seed=1))
    assert other.val.indices != splits.val.indices


def test_digits_hold_out_a_fixed_seeded_part_that_no_model_and_no_extractor_trains_on():
    from dmat.evaluation.features import labelled_dataset

    held_out, train = load_held_out("digits", 16), load_dataset("digits", 16)
    assert (len(held_out), len(train)) == (400, 1397)
    assert torch.bincount(held_out.base.tensors[1]).tolist() == [40] * 10
    assert torch.equal(load_held_out("digits", 16).base.tensors[0], held_out.base.tensors[0])  # fixed
    seen = {tuple(x.flatten().tolist()) for x in train.base.tensors[0]}
    unseen = [tuple(x.flatten().tolist()) for x in held_out.base.tensors[0]]
    assert sum(x in seen for x in unseen) <= 2  # disjoint (the bundled set repeats a digit or two verbatim)
    assert len(labelled_dataset("digits", 16)) == 1397  # the feature extractor's data: the held-out part left out
    assert len(load_dataset("digits", 16, with_held_out=True)) == 1797  # what models trained on before


def _write_idx(path, array: np.ndarray, gz: bool = False):
    dtype_code = 0x08
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_formats_are_read_by_torchvision(tmp_path, monkeypatch, no_network, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    monkeypatch.setenv("DMAT_DATA_DIR", str(tmp_path))
    ds = load_dataset(name, 28)
    assert len(ds) == 12
    first = ds[0]
    expected = torch.tensor(np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:16 + 784], np.uint8))
    assert torch.allclose((first[0] + 1) / 2 * 255, expected.view(28, 28).float(), atol=0.5)
    assert load_dataset(name, 16)[0].shape == (1, 16, 16)
    held_out = load_held_out(name, 28)  # the test split, which no model trains on: the evaluations' reference
    test_image = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:16 + 784], np.uint8)
    assert len(held_out) == 4
    assert torch.allclose((held_out[0][0] + 1) / 2 * 255, torch.tensor(test_image).view(28, 28).float(), atol=0.5)
    assert no_network == []  # read from disk: nothing was fetched


def test_cifar10_python_batches_are_read_by_torchvision(tmp_path, monkeypatch, no_network):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), "labels": [0, 1, 2]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setenv("DMAT_DATA_DIR", str(tmp_path))
    ds = load_dataset("cifar10", 32)
    assert len(ds) == 15
    x = ds[0]
    first = pickle.loads((base / "data_batch_1").read_bytes())["data"][0].reshape(3, 32, 32)
    assert x.shape == (3, 32, 32)
    assert torch.allclose((x + 1) / 2 * 255, torch.tensor(first).float(), atol=0.5)
    assert no_network == []


def test_image_folder(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}", 32)
    assert len(ds) == 6 and ds[0].shape == (3, 32, 32)


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("DMAT_DATA_DIR", str(tmp_path))
    with pytest.raises(DmatError, match=r"^mnist is not on disk.*: put the original files in .*MNIST/raw") as missing:
        load_dataset("mnist", 28)
    assert "\n" not in str(missing.value) and missing.value.__cause__ is None
    with pytest.raises(DmatError, match="does not exist"):
        load_dataset(f"folder:{tmp_path}/nope", 32)
    with pytest.raises(DmatError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", 32)
