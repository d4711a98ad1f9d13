"""One epoch's bookkeeping for one model: image-weighted means of its training and validation loss components, and
the time its own steps took."""

from __future__ import annotations

from dmat import distributed


class Mean:
    """Image-weighted means of named values over one pass of the data."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.images = 0

    def add(self, values: dict[str, float], images: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * images
        self.images += images


class EpochTotals:
    """What one model did in the current epoch: its training and validation means and the seconds of its steps."""

    def __init__(self):
        self.train, self.val, self.seconds = Mean(), Mean(), 0.0

    def train_metrics(self, shared_seconds: float, device) -> dict[str, float]:
        """Mean training loss components over all processes, and the epoch's time: this model's own steps
        plus its share of what the models of the loop shared (data, and anything done once per batch)."""
        totals = distributed.sum_over_processes({**self.train.sums, "_images": self.train.images}, device)
        images, seconds = totals.pop("_images"), self.seconds + shared_seconds
        return {**{f"train_{k}": v / images for k, v in totals.items()}, "epoch_seconds": seconds,
                "train_images_per_s": images / seconds}

    def val_metrics(self) -> dict[str, float]:
        return {f"val_{k}": v / self.val.images for k, v in self.val.sums.items()}
