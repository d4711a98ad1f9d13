"""dmat's UNet against diffusers' at the same parameters, fp32 and bf16, train and forward, one run.

    .venv/bin/pip install -e '.[bench]'     # diffusers: a bench-only extra, never a runtime dependency
    .venv/bin/python bench/bench_unet.py [--batch-size 64] [--repeats 7] [--device auto]

Prints the machine's matmul peaks and a markdown table: train-step images/s (forward, MSE loss,
backward, AdamW), forward images/s (inference mode), and the dmat/diffusers ratios. Both networks
are timed alternately in every repeat and the median is taken, so a noisy, shared machine shifts
both alike: compare the ratios, not the absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from dmat.model.unet import UNet, UNetConfig
from dmat.runtime import resolve_device


def diffusers_unet(image_size: int, dropout: float):
    """diffusers' UNet2DModel with dmat's default layout: widths 32/64/64, 2 blocks per level,
    attention at the 4x4 level, 8 norm groups (the same 1,623,169 parameters), and the same dropout
    in the same place (after the second norm of each residual block)."""
    from diffusers import UNet2DModel

    model = UNet2DModel(sample_size=image_size, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=2,
                        norm_num_groups=8, attention_head_dim=64, dropout=dropout)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype, device, n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def precision(name: str, device):
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(call, params, optimizer, x, t, target, ctx):
    with ctx:
        loss = F.mse_loss(call(x, t).float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def images_per_s(fn, batch: int, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks (compiled in the warm-up)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)

    dmat_model = UNet(UNetConfig(image_size=args.image_size)).to(device)
    diffusers_model = diffusers_unet(args.image_size, dmat_model.config.dropout).to(device)
    dmat_call, diffusers_call = (torch.compile(dmat_model), torch.compile(diffusers_model)) if args.compile else (
        dmat_model, diffusers_model)
    nets = {"dmat": (dmat_call, dmat_model), "diffusers": (lambda x, t: diffusers_call(x, t).sample, diffusers_model)}
    b, s = args.batch_size, args.image_size
    x, target = torch.randn(b, 1, s, s, device=device), torch.randn(b, 1, s, s, device=device)
    t = torch.randint(0, 1000, (b,), device=device)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {b}, {s}x{s}"
          + (", torch.compile" if args.compile else ""))
    print(f"matmul 1024^3: fp32 {matmul_gflops(torch.float32, device):.0f} GFLOP/s, "
          f"bf16 {matmul_gflops(torch.bfloat16, device):.0f} GFLOP/s")
    for name, (_, module) in nets.items():
        print(f"{name}: {sum(p.numel() for p in module.parameters()):,} parameters")

    results = {}
    for prec in ("fp32", "bf16"):
        optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (_, m) in nets.items()}
        samples = {(name, kind): [] for name in nets for kind in ("train", "forward")}
        for repeat in range(args.repeats + 1):  # the first repeat warms up
            for name, (call, module) in nets.items():
                module.train()
                train = images_per_s(lambda: train_step(call, module, optimizers[name], x, t, target,
                                                        precision(prec, device)), b, device)
                module.eval()
                with torch.inference_mode(), precision(prec, device):
                    forward = images_per_s(lambda: call(x, t), b, device)
                if repeat:
                    samples[name, "train"].append(train)
                    samples[name, "forward"].append(forward)
        for key, values in samples.items():
            results[(prec, *key)] = statistics.median(values)

    print("\n| network | precision | train step img/s | forward img/s |")
    print("|---|---|---|---|")
    for (prec, name, kind), value in sorted(results.items()):
        if kind == "train":
            print(f"| {name} | {prec} | {value:.0f} | {results[prec, name, 'forward']:.0f} |")
    print("\n| ratio | train | forward |")
    print("|---|---|---|")
    for label, num, den in (("dmat/diffusers fp32", ("fp32", "dmat"), ("fp32", "diffusers")),
                            ("dmat/diffusers bf16", ("bf16", "dmat"), ("bf16", "diffusers")),
                            ("dmat bf16 / diffusers fp32", ("bf16", "dmat"), ("fp32", "diffusers")),
                            ("dmat bf16 / dmat fp32", ("bf16", "dmat"), ("fp32", "dmat"))):
        print(f"| {label} | {results[(*num, 'train')] / results[(*den, 'train')]:.2f}x | "
              f"{results[(*num, 'forward')] / results[(*den, 'forward')]:.2f}x |")


if __name__ == "__main__":
    main()
