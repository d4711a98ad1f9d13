"""Training throughput of the default teacher: images/s and peak memory of real optimizer steps.

    .venv/bin/python bench/bench_teacher.py [--steps 30] [--batch-size 64] [--device auto]

Times full training steps (forward, DDPM loss, backward, AdamW, EMA) of the default architecture on
the default data set, after warm-up, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from torch.optim.swa_utils import AveragedModel

from dmat.config import TrainConfig
from dmat.data import load_splits, loader
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.unet import UNet, UNetConfig
from dmat.runtime import resolve_device
from dmat.training.loop import ema_average


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    cfg = TrainConfig(batch_size=args.batch_size)
    device = resolve_device(args.device)
    splits = load_splits(cfg)
    model = UNet(UNetConfig(image_size=splits.image_size, in_channels=splits.channels)).to(device)
    diffusion = GaussianDiffusion(DiffusionConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, foreach=True)
    ema = AveragedModel(model, multi_avg_fn=ema_average(cfg.ema_decay), use_buffers=True)
    batches = iter(loader(splits.train, cfg.batch_size, shuffle=True, seed=0))
    times = []
    for step in range(args.warmup + args.steps):
        try:
            x0 = next(batches).to(device)
        except StopIteration:
            batches = iter(loader(splits.train, cfg.batch_size, shuffle=True, seed=step))
            x0 = next(batches).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = diffusion.training_loss(model, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append((time.perf_counter() - start) / x0.shape[0])
    peak_mb = (torch.cuda.max_memory_allocated() if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    print(json.dumps({
        "bench": "teacher_train_step", "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size, "parameters": model.num_parameters,
        "images_per_s_median": round(1 / statistics.median(times), 1),
        "epoch_seconds_estimate": round(statistics.median(times) * len(splits.train), 2),
        "peak_memory_mb": round(peak_mb, 1),
    }))


if __name__ == "__main__":
    main()
