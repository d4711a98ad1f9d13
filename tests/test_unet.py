"""The UNet family: every size builds and runs, widths scale with size_factor, bad sizes are refused."""

import pytest
import torch

from dmat.errors import DmatError
from dmat.model.unet import UNet, UNetConfig


@pytest.mark.parametrize("size_factor", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("image_size,channels", [(16, 1), (28, 1), (32, 3)])
def test_every_size_maps_images_to_images(size_factor, image_size, channels):
    model = UNet(UNetConfig(image_size=image_size, in_channels=channels, size_factor=size_factor, base_channels=16))
    x = torch.randn(2, channels, image_size, image_size)
    out, features = model(x, torch.tensor([0, 999]), return_features=True)
    assert out.shape == x.shape
    assert [f.shape[1] for f in features] == model.feature_channels


def test_parameters_grow_with_size_factor_and_are_not_size_factor_squared():
    sizes = [0.01, 0.05, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    counts = [UNet(UNetConfig(size_factor=s)).num_parameters for s in sizes]
    assert counts == sorted(counts)
    assert len(set(counts[1:])) == len(counts) - 1, "distinct from 0.05 up; below, the width floor merges sizes"
    ratio = counts[0] / counts[-1]
    assert ratio > 0.01**2 * 10, "the width floor keeps tiny students far above size_factor**2"


@pytest.mark.parametrize("bad", [0.0, -1.0, 1.5])
def test_size_factor_outside_range_is_refused(bad):
    with pytest.raises(DmatError, match="between 0.01 and 1.0"):
        UNet(UNetConfig(size_factor=bad))


def test_image_size_that_cannot_be_halved_is_refused():
    with pytest.raises(DmatError, match="multiple of 4"):
        UNet(UNetConfig(image_size=18))


def test_dropout_drops_each_element_with_probability_p_in_training_and_nothing_in_eval():
    from dmat.model.unet import Dropout

    drop = Dropout(0.1)
    x = torch.ones(200_000)
    y = drop(x)
    assert sorted(y.unique().tolist()) == [0.0, pytest.approx(1 / 0.9)]
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003  # 0.1 +- 4 sd of a Bernoulli mean over 200k
    assert abs(y.mean().item() - 1.0) < 0.01  # rescaled: the expected activation is unchanged
    drop.eval()
    assert torch.equal(drop(x), x)
