"""The best model so far and early stopping: the lowest validation loss, its epoch and EMA weights, how many epochs
have passed without a new best, and whether the model was still improving when it stopped
(`dmat.training.convergence`)."""

from __future__ import annotations

import copy
import math

from dmat.training import convergence


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
