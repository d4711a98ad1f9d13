"""What the training loop reports, and to whom: a `Recorder` receives each epoch's metrics and the
checkpoints worth keeping. This base class keeps nothing, so `fit` runs (and is tested) without any
tracking; `dmat.tracking.recorder.MlflowRecorder` writes to an MLflow run.
"""

from __future__ import annotations


class Recorder:
    """Called by `training.fit` on the main process only, in this order per epoch: `on_best` (a new
    best validation loss), `on_checkpoint` (resumable state, every save interval and on the way out),
    `on_epoch` (the epoch's metrics); `on_resume` when a run continues, `on_end` once at the end."""

    def on_best(self, state: dict) -> None:
        """A checkpoint dict (dmat.model.checkpoint format) with the new best EMA weights."""

    def on_checkpoint(self, state: dict) -> None:
        """A checkpoint dict with `train_state`: everything needed to resume after its epoch."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's train/validation metrics."""

    def on_resume(self, epoch: int, metrics: dict[str, float]) -> None:
        """Training continues after `epoch`, whose metrics were saved with the resumed state. Epochs after
        it may have been reported before (a process killed between saves): they are trained again."""

    def on_end(self, summary: dict[str, float]) -> None:
        """best_val_loss, best_epoch and epochs_run."""
