"""The best model so far and early stopping: the lowest validation loss, its epoch and EMA weights, how many epochs
have passed without a new best, and whether the model was still improving when it stopped
(`dmat.training.convergence`).

Two rules stop a model early, either or both: patience (so many epochs without a new best), and convergence (the
slope test of dmat.training.convergence finds the curve no longer falling by a real and material amount). Patience
never fires on a curve that improves by ~1% every 20 epochs (issue 28: a new best at epoch 203 of 300); the slope
test stops such a run once the gain is below 0.7% of the loss per tenth of the epochs run. Applied after every
epoch, the test looks many times, so a stop needs STOP_CONFIRMATIONS verdicts in a row and at least STOP_MIN_EPOCHS
epochs: on simulated curves still falling steeply (noise 1% per epoch) stopping on the first verdict from epoch 10 on
stopped 62 of 100 (short windows have little power), 3 in a row from epoch 20 on stopped 1 of 100, while flat curves
stopped at epoch 22."""

from __future__ import annotations

import copy
import math

from dmat.training import convergence

STOP_MIN_EPOCHS = 20  # the slope test stops no run before this many epochs ...
STOP_CONFIRMATIONS = 3  # ... and only after this many "converged" verdicts in a row
STOP_REASONS = {"asked": "its epoch callback asked (e.g. an Optuna pruner)",
                "patience": "no new best validation loss for --early-stopping-patience epochs",
                "converged": "converged: the slope test of its validation losses (dmat.training.convergence)"}


class BestSoFar:
    """The best epoch by validation loss, and the validation losses of the epochs run (for `still_improving`)."""

    def __init__(self):
        self.val, self.epoch, self.since = math.inf, 0, 0
        self.weights: dict | None = None
        self.val_losses: list[float] = []

    def improved(self, val_loss: float, epoch: int, weights: dict) -> bool:
        """Record an epoch's validation loss; True (and a copy of `weights` kept) if it is a new best."""
        self.val_losses.append(val_loss)
        if val_loss >= self.val:
            self.since += 1
            return False
        self.val, self.epoch, self.since = val_loss, epoch, 0
        self.weights = copy.deepcopy(weights)
        return True

    def patience_out(self, patience: int) -> bool:
        """Early stopping: `patience` epochs (0: never) without a new best."""
        return bool(patience and self.since >= patience)

    def converged(self) -> bool:
        """The convergence stop: the slope test found the curve converged at each of the last STOP_CONFIRMATIONS
        epochs, the first of them at least STOP_MIN_EPOCHS in. From the losses alone, so a resumed run decides alike."""
        n = len(self.val_losses)
        return n - STOP_CONFIRMATIONS + 1 >= STOP_MIN_EPOCHS and not any(
            convergence.still_improving(self.val_losses[:n - k]) for k in range(STOP_CONFIRMATIONS))

    def stop_reason(self, asked: bool, patience: int, by_convergence: bool) -> str:
        """Why the model stops after this epoch (a key of STOP_REASONS, the first that holds), or "epochs": it goes on
        to its cap."""
        holds = {"asked": asked, "patience": self.patience_out(patience),
                 "converged": by_convergence and self.converged()}
        return next((reason for reason, stop in holds.items() if stop), "epochs")

    def summary(self, epochs_run: int, stop_reason: str, by_convergence: bool) -> dict[str, float]:
        """The run's summary metrics; `stopped_converged` (1/0) only where the convergence stop was on."""
        stopped = stop_reason != "epochs"
        out = {"best_val_loss": self.val, "best_epoch": self.epoch, "epochs_run": epochs_run,
               "still_improving": float(self.still_improving(stopped))}
        return {**out, "stopped_converged": float(stop_reason == "converged")} if by_convergence else out

    def still_improving(self, stopped: bool) -> bool:
        """Whether the model was still getting better when its epochs ran out, by the plateau test on its validation
        losses (dmat.training.convergence). A model early stopping (or its callback) stopped had converged."""
        return not stopped and convergence.still_improving(self.val_losses)

    def state(self) -> dict:
        """Its part of `last.pt`'s `train_state` (the checkpoint format's keys)."""
        return {"best_val_loss": self.val, "best_epoch": self.epoch, "epochs_since_best": self.since,
                "val_losses": list(self.val_losses)}

    def restore(self, state: dict, best_weights: dict | None) -> None:
        self.val, self.epoch, self.since = state["best_val_loss"], state["best_epoch"], state["epochs_since_best"]
        self.weights = best_weights
        self.val_losses = list(state.get("val_losses", []))  # none in a last.pt from before they were kept
