"""A `Recorder` that keeps everything in memory, so tests can call `training.fit` with no MLflow run."""

from __future__ import annotations

from dmat.training.recorder import Recorder


class MemoryRecorder(Recorder):
    def __init__(self):
        self.metrics: dict[int, dict[str, float]] = {}
        self.best: list[dict] = []
        self.checkpoints: list[dict] = []
        self.resumed: list[int] = []
        self.summary: dict[str, float] = {}

    def on_best(self, state):
        self.best.append(state)

    def on_checkpoint(self, state):
        self.checkpoints.append(state)

    def on_epoch(self, epoch, metrics):
        self.metrics[epoch] = metrics

    def on_resume(self, epoch, metrics):
        self.resumed.append(epoch)

    def on_end(self, summary):
        self.summary = summary
