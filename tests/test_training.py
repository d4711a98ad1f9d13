"""`training.fit` on its own: no MLflow run, a recorder that keeps everything in memory."""

from __future__ import annotations

import mlflow
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet
from recording import MemoryRecorder
from torch.utils.data import Subset

from dmat.data import DataSplits, load_splits
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet
from dmat.training.loop import DiffusionLoss, Job, fit, fit_together


class WorseningValidation(DiffusionLoss):
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
    result = _fit(DiffusionLoss, recorder, epochs=3, save_interval=2)
    assert mlflow.active_run() is None and mlflow.search_runs(search_all_experiments=True).empty
    assert sorted(recorder.metrics) == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_task_loss", "epoch_seconds"} <= set(recorder.metrics[3])
    assert [c["epoch"] for c in recorder.checkpoints] == [1, 2, 3]  # the first epoch, the interval, the last
    assert recorder.summary == {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                                "epochs_run": 3, "still_improving": float(result.best_epoch == 3)}


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


class ImprovingValidation(WorseningValidation):
    """Each validation pass scores better than the one before: the model never stops improving."""

    def loss(self, model, x0, generator=None):
        loss, parts = super().loss(model, x0, generator)
        return (loss, parts) if model.training else (1 / loss, parts)


def test_the_summary_says_whether_the_model_was_still_improving_when_it_stopped():
    stopped, capped = MemoryRecorder(), MemoryRecorder()
    _fit(WorseningValidation, stopped, epochs=10, early_stopping_patience=2)
    _fit(ImprovingValidation, capped, epochs=3, early_stopping_patience=2)
    assert stopped.summary["still_improving"] == 0.0  # early stopping ended it: converged
    assert (capped.summary["best_epoch"], capped.summary["still_improving"]) == (3, 1.0)  # best at the last epoch


TIMING = {"epoch_seconds", "train_images_per_s"}


def _small(cfg) -> DataSplits:
    """256 training images (4 batches of 64) and 64 validation images: a few steps, quickly."""
    full = load_splits(cfg)
    return DataSplits(Subset(full.train, range(256)), Subset(full.val, range(64)), full.image_size, full.channels)


def _models():
    """Two models of different widths with dropout on, each built from its own seed (as `_prepare` does)."""
    models = []
    for seed, size_factor in ((0, 1.0), (1, 0.5)):
        torch.manual_seed(seed)
        models.append(UNet(tiny_unet(image_size=8, dropout=0.1, size_factor=size_factor)))
    return models


def test_models_trained_together_get_exactly_what_they_get_alone():
    """Each model's noise and dropout are its own streams, so neither the other model's draws nor the order of
    their steps changes a number."""
    cfg = tiny_train(epochs=2, batch_size=64)
    diffusion, splits = GaussianDiffusion(tiny_diffusion()), _small(cfg)
    alone = []
    for model in _models():
        recorder = MemoryRecorder()
        alone.append((recorder, fit(model, diffusion, DiffusionLoss(diffusion), splits, cfg, torch.device("cpu"),
                                    recorder)))
    recorders = [MemoryRecorder(), MemoryRecorder()]
    jobs = [Job(model, diffusion, DiffusionLoss(diffusion), recorder)
            for model, recorder in zip(_models(), recorders)]
    together = fit_together(jobs, splits, cfg, torch.device("cpu"))
    for (recorder_alone, result_alone), recorder, result in zip(alone, recorders, together):
        assert recorder.metrics.keys() == recorder_alone.metrics.keys() == {1, 2}
        for epoch, metrics in recorder.metrics.items():
            assert {k: v for k, v in metrics.items() if k not in TIMING} == \
                   {k: v for k, v in recorder_alone.metrics[epoch].items() if k not in TIMING}
        weights, weights_alone = result.ema_model.state_dict(), result_alone.ema_model.state_dict()
        assert all(torch.equal(weights[k], weights_alone[k]) for k in weights)
        assert recorder.summary == recorder_alone.summary


class FailsAtStep(DiffusionLoss):
    """The DDPM loss until training step `at`, then an error (as a store or device failure would raise)."""

    def __init__(self, diffusion, at: int):
        super().__init__(diffusion)
        self.at, self.steps = at, 0

    def loss(self, model, x0, generator=None):
        if model.training:
            self.steps += 1
            if self.steps == self.at:
                raise RuntimeError("injected failure")
        return super().loss(model, x0, generator)


def test_in_a_shared_loop_a_failing_or_stopping_model_drops_out_and_the_others_go_on():
    cfg = tiny_train(epochs=3, batch_size=64, early_stopping_patience=1)
    diffusion, splits = GaussianDiffusion(tiny_diffusion()), _small(cfg)
    steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
    objectives = [FailsAtStep(diffusion, at=steps_per_epoch + 2), WorseningValidation(diffusion),
                  DiffusionLoss(diffusion)]
    recorders = [MemoryRecorder() for _ in objectives]
    models = [UNet(tiny_unet(image_size=8)) for _ in objectives]
    results = fit_together([Job(m, diffusion, o, r) for m, o, r in zip(models, objectives, recorders)], splits, cfg,
                           torch.device("cpu"))
    failed, stopped, trained = results
    assert isinstance(failed, RuntimeError) and sorted(recorders[0].metrics) == [1]
    assert [c["epoch"] for c in recorders[0].checkpoints] == [1]  # its last finished epoch stays resumable
    assert (stopped.best_epoch, stopped.epochs_run, stopped.stopped_early) == (1, 2, True)
    assert trained.epochs_run == 3 and sorted(recorders[2].metrics) == [1, 2, 3]


def test_the_ema_follows_the_warm_up_recurrence_on_every_tensor():
    """avg <- d * avg + (1 - d) * w with d = min(decay, (1+n)/(10+n)) after n updates; the first update copies."""
    from torch.optim.swa_utils import AveragedModel

    from dmat.training.loop import ema_average

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4))
    ema = AveragedModel(model, multi_avg_fn=ema_average(0.9), use_buffers=True)
    expected = None
    for n in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        weights = [p.detach().clone() for p in model.parameters()]
        if expected is None:
            expected = weights
        else:
            d = min(0.9, (1 + n) / (10 + n))  # n updates were averaged before this one
            expected = [d * a + (1 - d) * w for a, w in zip(expected, weights)]
        ema.update_parameters(model)
    for got, want in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(got, want)
