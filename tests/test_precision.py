"""--precision: bf16 autocast where the hardware has it, fp32 losses, EMA, optimizer state and validation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet

from dmat import runtime
from dmat.data import load_splits
from dmat.errors import DmatError
from dmat.model.diffusion import GaussianDiffusion, sample_from_seed
from dmat.model.unet import UNet
from dmat.training.loop import DiffusionLoss, fit

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                             ({"avx2", "avx512f"}, "fp32"), (set(), "fp32")])
def test_auto_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch, flags, expected):
    monkeypatch.delenv(runtime.CPU_BF16, raising=False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32" and runtime.resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize("said, flags, expected", [("0", {"amx_bf16"}, "fp32"), ("1", {"avx2"}, "bf16")])
def test_dmat_cpu_bf16_makes_auto_see_another_kind_of_cpu(monkeypatch, said, flags, expected):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    monkeypatch.setenv(runtime.CPU_BF16, said)
    assert runtime.resolve_precision("auto", CPU) == expected


def test_a_wrong_dmat_cpu_bf16_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(runtime.CPU_BF16, "yes")
    with pytest.raises(DmatError, match="DMAT_CPU_BF16 must be 0 .* or 1 .*, got 'yes'"):
        runtime.resolve_precision("auto", CPU)


def test_auto_is_fp32_on_gpus_where_bf16_autocast_was_slower(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_auto_keeps_fp32_on_apple_gpus_and_a_wrong_name_is_one_clear_error():
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(DmatError, match="precision must be auto, fp32, bf16, got 'fp16'"):
        runtime.resolve_precision("fp16", CPU)
    with pytest.raises(DmatError, match="precision must be"):
        tiny_train(precision="half").validate()


def _dtypes_seen(precision: str) -> tuple[list, object]:
    """Train two epochs; the dtype of the first convolution's output in each training and validation pass."""
    cfg = tiny_train(batch_size=512, precision=precision)
    diffusion = GaussianDiffusion(tiny_diffusion())
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8))
    seen = []
    model.stem.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    result = fit(model, diffusion, DiffusionLoss(diffusion), load_splits(cfg), cfg, CPU)
    return seen, result


def test_bf16_trains_the_network_in_bf16_and_keeps_weights_and_validation_in_fp32():
    seen, result = _dtypes_seen("bf16")
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # validation: fp32 always
    assert all(p.dtype == torch.float32 for p in result.ema_model.parameters())
    assert torch.isfinite(torch.tensor(result.best_val_loss))


def test_fp32_trains_in_fp32():
    seen, _ = _dtypes_seen("fp32")
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_bf16_sampling_gives_fp32_images_close_to_fp32_sampling():
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8)).eval()
    diffusion = GaussianDiffusion(tiny_diffusion())
    fp32 = sample_from_seed(model, diffusion, 8, "ddim", 10, seed=3)
    bf16 = sample_from_seed(model, diffusion, 8, "ddim", 10, seed=3, precision="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # the network really ran in bf16
    assert (bf16 - fp32).abs().mean() < 0.02  # bf16 keeps ~3 significant digits: small differences, not other images
