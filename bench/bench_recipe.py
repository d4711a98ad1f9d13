"""The convergence recipe A/B (issue 28, "converge in fewer epochs" and "stop when converged"): a teacher trained
twice from the same seed on the bundled digits, with today's recipe (uniform loss weights, constant lr 2e-4) and
with the new one (min-SNR-5 weighting, a warm-up then a cosine decay to 0.1 x lr over the cap), each to the same
epoch cap with no early stopping, then both validation curves replayed through the stop rules:

- epochs to converged: the first epoch at which `--stop-when-converged` (dmat.training.best.BestSoFar.converged,
  the slope test of dmat.training.convergence) would stop the run, and where patience 10 would;
- the best validation loss up to that stop (the converged loss), and the best at equal epochs (the cap, and the
  earlier of the two stops). Validation is the plain unweighted eps MSE for both, so the losses compare.

    .venv/bin/python bench/bench_recipe.py                       # base 16 (the quick preset's teacher), 60 epochs
    .venv/bin/python bench/bench_recipe.py --base-channels 32 --epochs 300   # the full preset's teacher (hours)
    .venv/bin/python bench/bench_recipe.py --tiny --base-channels 8 --image-size 8 --epochs 40 --precision fp32 \
        --threads 1                                 # what fits ~5 min on 2 cores shared with other work

Prints one line per epoch and arm, a table and one JSON line with the ratios (old / new).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dmat.config import TrainConfig
from dmat.data import load_splits
from dmat.model.diffusion import DiffusionConfig, GaussianDiffusion
from dmat.model.unet import UNet, UNetConfig
from dmat.runtime import resolve_precision
from dmat.training.best import BestSoFar
from dmat.training.loop import DiffusionLoss, fit
from dmat.training.recorder import Recorder

RECIPES = {"old": {}, "new": dict(snr_gamma=5.0, lr_schedule="cosine", lr_warmup_epochs=2, lr_floor=0.1)}


class Curve(Recorder):
    """Keeps each epoch's validation loss and prints it."""

    def __init__(self, arm: str):
        self.arm, self.val, self.start = arm, [], time.perf_counter()

    def on_epoch(self, epoch, metrics):
        self.val.append(metrics["val_loss"])
        print(f"{self.arm} epoch {epoch}: val {metrics['val_loss']:.5f} lr {metrics['lr']:.2e} "
              f"({time.perf_counter() - self.start:.0f} s)", flush=True)


def stop_epochs(val: list[float], patience: int = 10) -> tuple[int | None, int | None]:
    """(the epoch the convergence stop fires, the epoch patience fires) on a replayed curve; None: never."""
    best, converged, patient = BestSoFar(), None, None
    for epoch, loss in enumerate(val, 1):
        best.improved(loss, epoch, {})
        converged = converged or (epoch if best.converged() else None)
        patient = patient or (epoch if best.patience_out(patience) else None)
    return converged, patient


def train(arm: str, args) -> list[float]:
    cfg = TrainConfig(epochs=args.epochs, image_size=args.image_size, early_stopping_patience=0, seed=args.seed, device="cpu",
                      precision=args.precision, compile="off", **RECIPES[arm]).validate()
    diffusion = GaussianDiffusion(DiffusionConfig())
    torch.manual_seed(args.seed)
    tiny = dict(channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,)) if args.tiny else {}
    model = UNet(UNetConfig(base_channels=args.base_channels, image_size=cfg.resolved_image_size(),
                            in_channels=cfg.channels, **tiny))
    curve = Curve(arm)
    fit(model, diffusion, DiffusionLoss(diffusion, cfg.snr_gamma), load_splits(cfg), cfg, torch.device("cpu"), curve)
    return curve.val


def summary(val: list[float], equal: int) -> dict:
    converged, patient = stop_epochs(val)
    at = converged or len(val)
    return {"converged_epoch": converged, "patience_epoch": patient, "converged_val": min(val[:at]),
            "best_val_at_cap": min(val), f"best_val_at_{equal}": min(val[:equal])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=0, help="0: the digits' 16 px; 8 to fit a loaded machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's; 1 on a machine shared "
                                                                  "with other work ran ~10x faster than 2)")
    parser.add_argument("--tiny", action="store_true", help="the tests' UNet (channel mults 1,2, one res block)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"precision {resolve_precision(args.precision, torch.device('cpu'))}, {torch.get_num_threads()} threads")
    curves = {arm: train(arm, args) for arm in RECIPES}
    stops = [stop_epochs(c)[0] or args.epochs for c in curves.values()]
    rows = {arm: summary(curve, min(stops)) for arm, curve in curves.items()}
    print("| recipe | " + " | ".join(rows["old"]) + " |")
    for arm, row in rows.items():
        print(f"| {arm} | " + " | ".join(f"{v:.5f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    old, new = rows["old"], rows["new"]
    ratios = {"epochs_to_converged_old_over_new": (old["converged_epoch"] or args.epochs)
              / (new["converged_epoch"] or args.epochs),
              "converged_val_old_over_new": old["converged_val"] / new["converged_val"],
              "best_val_at_cap_old_over_new": old["best_val_at_cap"] / new["best_val_at_cap"]}
    print(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios, "curves": curves}))


if __name__ == "__main__":
    main()
