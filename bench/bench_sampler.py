"""Cheaper sampling for evaluation: DPM-Solver++(2M) against DDIM on a small teacher (issue 28's sampler lever).

    .venv/bin/python bench/bench_sampler.py [--epochs 10] [--base-channels 16] [--num-images 256] [--precision fp32]

On a machine shared with other jobs, prefix OMP_NUM_THREADS=1: two threads spinning against other processes made
a training step 10-20x slower here (the whole bench took 5.7 min with it on a 2-core CPU at load ~8).

Trains a small teacher on the bundled digits (dmat's own loop and loss, no MLflow), then samples the same starting
noise with every sampler and step count, and prints per sampler: seconds per image, the MSE of its images against a
250-step DDIM reference from the same noise (how far it is from the ODE's answer), and KID against the real digits
in the evaluation's headline random-CNN space (mean and sd over draws, with the real-vs-real floor beside it). The
last line is the lever's ratio: the cost of dpmpp2m at 20 steps over ddim at 50, and their KIDs.
"""

from __future__ import annotations

import argparse
import time

import torch

from dmat.config import TrainConfig
from dmat.data import load_dataset, load_splits
from dmat.evaluation.quality import matched_scores
from dmat.evaluation.spaces import RandomCNNFeatures
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion, sample
from dmat.model.unet import UNet, UNetConfig
from dmat.training.loop import fit
from dmat.training.losses import DiffusionLoss

RUNS = (("ddim", 10), ("ddim", 20), ("ddim", 50), ("dpmpp2m", 10), ("dpmpp2m", 20))
REFERENCE = ("ddim", 250)


def teacher(epochs: int, base_channels: int) -> tuple[UNet, GaussianDiffusion]:
    cfg = TrainConfig(dataset="digits", epochs=epochs, early_stopping_patience=0, device="cpu", precision="fp32",
                      compile="off")
    splits = load_splits(cfg)
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=splits.image_size, in_channels=splits.channels, base_channels=base_channels))
    diffusion = GaussianDiffusion(DiffusionConfig())
    result = fit(model, diffusion, DiffusionLoss(diffusion), splits, cfg, torch.device("cpu"))
    print(f"teacher: {model.num_parameters} parameters, {epochs} epochs, best validation loss "
          f"{result.best_val_loss:.4f} (epoch {result.best_epoch})")
    return result.ema_model.eval(), diffusion


def timed_sample(model, diffusion, x_T, sampler: str, steps: int, precision: str) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    images = sample(model, diffusion, x_T, sampler, steps, generator=torch.Generator().manual_seed(1),
                    precision=precision)
    return images, (time.perf_counter() - start) / len(x_T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    model, diffusion = teacher(args.epochs, args.base_channels)
    c = model.config
    x_T = torch.randn((args.num_images, c.in_channels, c.image_size, c.image_size),
                      generator=torch.Generator().manual_seed(0))
    reference, reference_seconds = timed_sample(model, diffusion, x_T, *REFERENCE, args.precision)
    features = RandomCNNFeatures(c.in_channels)
    data = load_dataset("digits", c.image_size)
    real = torch.stack([data[i] for i in range(len(data))])
    real_features = features(real)
    n = min(args.num_images, len(real) // 2)
    rows = {}
    print(f"{args.num_images} images from the same noise, N={n} a side, {args.draws} draws, torch threads "
          f"{torch.get_num_threads()}, precision {args.precision}")
    print(f"{'sampler':>8} {'steps':>5} {'ms/image':>9} {'MSE vs ddim-250':>16} {'KID x1e3 (sd)':>15}")
    for sampler, steps in RUNS + (REFERENCE,):
        images, seconds = ((reference, reference_seconds) if (sampler, steps) == REFERENCE
                           else timed_sample(model, diffusion, x_T, sampler, steps, args.precision))
        scores = matched_scores(features(images), real_features, n, args.draws, seed=0)
        rows[sampler, steps] = seconds, scores["kid"]
        print(f"{sampler:>8} {steps:>5} {1e3 * seconds:>9.2f} {(images - reference).pow(2).mean().item():>16.2e} "
              f"{1e3 * scores['kid']:>7.3f} ({1e3 * scores['kid_sd']:.3f})")
    print(f"floor: KID x1e3 {1e3 * scores['kid_floor']:.3f} (sd {1e3 * scores['kid_floor_sd']:.3f}), real vs real")
    (t20, kid20), (t50, kid50) = rows["dpmpp2m", 20], rows["ddim", 50]
    print(f"ratio: dpmpp2m-20 / ddim-50 cost {t20 / t50:.2f} (KID x1e3 {1e3 * kid20:.3f} vs {1e3 * kid50:.3f})")


if __name__ == "__main__":
    main()
