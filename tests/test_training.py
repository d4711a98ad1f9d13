"""`training.fit` on its own: no MLflow run, a recorder that keeps everything in memory."""

from __future__ import annotations

import mlflow
import torch

from conftest import tiny_diffusion, tiny_train, tiny_unet
from dmat.data import load_splits
from dmat.diffusion import GaussianDiffusion
from dmat.training import DiffusionObjective, fit
from dmat.unet import UNet
from recording import MemoryRecorder


class WorseningValidation(DiffusionObjective):
    """Trains on the DDPM loss, but each validation pass scores worse than the one before."""

    validations = 0

    def loss(self, model, x0, generator=None):
        loss, parts = super().loss(model, x0, generator)
        if model.training:
            return loss, parts
        self.validations += 1
        return torch.tensor(float(self.validations)), parts


def _fit(objective_cls, recorder=None, **train):
    cfg = tiny_train(batch_size=512, **train)  # one validation batch per epoch
    diffusion = GaussianDiffusion(tiny_diffusion())
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8))
    return fit(model, diffusion, objective_cls(diffusion), load_splits(cfg), cfg, torch.device("cpu"), recorder)


def test_fit_needs_no_mlflow_run_and_reports_every_epoch_to_its_recorder(store):
    recorder = MemoryRecorder()
    result = _fit(DiffusionObjective, recorder, epochs=3, save_interval=2)
    assert mlflow.active_run() is None and mlflow.search_runs(search_all_experiments=True).empty
    assert sorted(recorder.metrics) == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_task_loss", "epoch_seconds"} <= set(recorder.metrics[3])
    assert [c["epoch"] for c in recorder.checkpoints] == [1, 2, 3]  # the first epoch, the interval, the last
    assert recorder.summary == {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                                "epochs_run": 3}


def test_early_stopping_stops_patience_epochs_after_the_best_and_returns_the_best_weights():
    recorder = MemoryRecorder()
    result = _fit(WorseningValidation, recorder, epochs=10, early_stopping_patience=2)
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (1, 3, True)
    assert sorted(recorder.metrics) == [1, 2, 3] and [b["epoch"] for b in recorder.best] == [1]
    assert recorder.checkpoints[-1]["epoch"] == 3  # the stopping epoch is always saved, to resume from
    best = recorder.best[0]["model"]
    assert all(torch.equal(best[k], v) for k, v in result.ema_model.state_dict().items())
    assert not all(torch.equal(best[k], v) for k, v in recorder.checkpoints[-1]["model"].items())


def test_patience_zero_turns_early_stopping_off():
    result = _fit(WorseningValidation, epochs=4, early_stopping_patience=0)
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (1, 4, False)
