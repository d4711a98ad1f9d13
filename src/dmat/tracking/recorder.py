"""The training loop's Recorder for MLflow runs."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from dmat.model import checkpoint
from dmat.tracking.artifacts import save_checkpoint
from dmat.training.recorder import Recorder


class MlflowRecorder(Recorder):
    """The training loop's recorder for an MLflow run: metrics by epoch, checkpoints as artifacts. The run is
    `run_id`, or the active run when it is None (as MLflow's own log functions take it): a loop that trains
    several models writes to each one's run by id. `saved_epoch` is the epoch checkpoints/last.pt holds
    (what a resume would continue after)."""

    def __init__(self, saved_epoch: int = 0, run_id: str | None = None):
        self.saved_epoch, self.run_id = saved_epoch, run_id
        self._logged: set[int] = set()  # epochs a killed process logged after its last.pt

    def _save(self, state: dict, name: str) -> None:
        save_checkpoint(state, name, **({"run_id": self.run_id} if self.run_id else {}))

    def on_best(self, state: dict) -> None:
        self._save(state, checkpoint.BEST)

    def on_checkpoint(self, state: dict) -> None:
        self._save(state, checkpoint.LAST)
        self.saved_epoch = state["epoch"]

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in self._logged:
            mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)

    def on_resume(self, epoch: int, metrics: dict[str, float]) -> None:
        """The history continues after `epoch`, once per step: its metrics are logged now if the run was
        killed between saving last.pt and logging them, and epochs after it that a killed process had
        logged (kill -9 between save intervals) are trained again from the same state, not logged twice."""
        run_id = self.run_id or mlflow.active_run().info.run_id
        steps = {m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")}
        if epoch not in steps:
            mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)
        self._logged = {step for step in steps if step > epoch}

    def on_end(self, summary: dict[str, float]) -> None:
        """The summary once: a run resumed after it was logged (stopped while its model was being logged)
        trains no further epoch and has the same summary, which is not logged again."""
        run_id = self.run_id or mlflow.active_run().info.run_id
        logged = MlflowClient().get_run(run_id).data.metrics
        mlflow.log_metrics({k: v for k, v in summary.items() if logged.get(k) != v}, run_id=self.run_id)
