"""Students that start from the teacher: structured channel pruning down to a student's widths."""

from __future__ import annotations

import dataclasses

import mlflow
import pytest
import torch
from conftest import tiny_diffusion, tiny_train, tiny_unet

from dmat import tracking
from dmat.data import load_splits
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.pruning import channel_map, prune_weights, taylor_saliency
from dmat.model.unet import UNet, UNetConfig
from dmat.stages.distill import train_student


def _student(teacher: UNet, size_factor: float) -> UNet:
    return UNet(dataclasses.replace(teacher.config, size_factor=size_factor))


@pytest.mark.parametrize("size_factor", [0.8, 0.5, 0.3, 0.1, 0.05, 0.01])
def test_pruned_weights_fit_every_student_of_the_default_architecture(size_factor):
    torch.manual_seed(0)
    teacher = UNet(UNetConfig())
    student = _student(teacher, size_factor)
    student.load_state_dict(prune_weights(teacher, student))  # strict: every shape and name matches


def test_pruning_to_the_full_width_is_the_teacher_itself():
    torch.manual_seed(0)
    teacher = UNet(UNetConfig()).eval()
    same = _student(teacher, 1.0).eval()
    same.load_state_dict(prune_weights(teacher, same))
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        assert torch.equal(same(x, t), teacher(x, t))


def test_channels_that_carry_nothing_are_the_ones_pruned():
    """Zero every weight producing the upper half of each channel space: pruning to half width must
    keep exactly the lower halves, and the half-width student then computes what the teacher does."""
    torch.manual_seed(0)
    teacher = UNet(UNetConfig(base_channels=16, dropout=0.0)).eval()
    m = channel_map(teacher)
    with torch.no_grad():
        state = teacher.state_dict()
        for name, (out, into) in m.params.items():
            for dim, spaces in ((0, out), (1, into)):
                if -1 in spaces or not spaces or (dim == 1 and state[name].dim() < 2):
                    continue
                offset = 0
                for space in spaces:
                    width = m.widths[space]
                    state[name].narrow(dim, offset + width // 2, width - width // 2).zero_()
                    offset += width
    student = _student(teacher, 0.5).eval()
    weights = prune_weights(teacher, student)
    student.load_state_dict(weights)
    assert all(w.abs().sum() > 0 for name, w in weights.items() if name.endswith("conv1.weight"))
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        h_teacher, h_student = teacher.stem(x), student.stem(x)
        assert torch.allclose(h_teacher[:, : h_student.shape[1]], h_student)


def test_a_pruned_student_starts_closer_to_its_teacher_than_a_random_one(study, teacher_run_id):
    teacher = tracking.load_model(teacher_run_id)
    x0 = torch.stack([load_splits(tiny_train()).val[i] for i in range(64)])
    t = torch.randint(0, teacher.diffusion.timesteps, (64,), generator=torch.Generator().manual_seed(0))
    x_t = teacher.diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    random = _student(teacher.model, 0.5).eval()
    pruned = _student(teacher.model, 0.5).eval()
    pruned.load_state_dict(prune_weights(teacher.model, pruned))
    with torch.no_grad():
        target = teacher.model(x_t, t)
        gap = {name: torch.mean((m(x_t, t) - target) ** 2).item() for name, m in (("random", random), ("pruned", pruned))}
    assert gap["pruned"] < 0.7 * gap["random"], gap  # about half, on the tiny two-epoch teacher


def test_init_pruned_is_a_logged_choice_and_a_bad_one_is_refused(study, teacher_run_id):
    with pytest.raises(DmatError, match="init must be random or pruned"):
        train_student(tiny_train(epochs=1), 0.5, teacher_run_id, init="copied")
    with pytest.raises(DmatError, match="prune-importance must be magnitude or taylor"):
        train_student(tiny_train(epochs=1), 0.5, teacher_run_id, init="pruned", prune_importance="random")
    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, init="pruned", prune_importance="taylor",
                           student_steps=4, experiment="dmat-test-pruning")
    run = mlflow.get_run(run_id)
    assert run.data.tags[tracking.INIT] == "pruned" and run.data.params["init"] == "pruned"
    assert run.data.params["prune_importance"] == "taylor"


def test_taylor_keeps_the_channels_the_loss_depends_on_where_magnitude_keeps_the_largest(tmp_path):
    """In the timestep embedding's channel space, give the upper half the largest weights but let nothing read
    them: magnitude must keep the upper half, Taylor (their gradient is zero) the lower half."""
    torch.manual_seed(0)
    teacher = UNet(tiny_unet(image_size=8)).eval()
    m = channel_map(teacher)
    width = teacher.time_mlp[0].out_features
    upper = slice(width // 2, width)
    with torch.no_grad():
        state = teacher.state_dict()
        for name, (out, into) in m.params.items():
            if name in ("time_mlp.0.weight", "time_mlp.2.weight"):
                state[name][upper] *= 10  # the largest producers of the upper channels
            if name.endswith("weight") and into == [1]:  # space 1: the embedding; its readers ignore the upper half
                state[name][:, upper] = 0
    student = _student(teacher, 0.5)
    diffusion, images = GaussianDiffusion(tiny_diffusion()), load_splits(tiny_train()).val
    by_magnitude = prune_weights(teacher, student)
    by_taylor = prune_weights(teacher, student, taylor_saliency(teacher, diffusion, images, batch_size=32, batches=2))
    bias = teacher.state_dict()["time_mlp.0.bias"]  # one value per embedding channel: which were kept
    assert torch.equal(by_magnitude["time_mlp.0.bias"], bias[upper])
    assert torch.equal(by_taylor["time_mlp.0.bias"], bias[: width // 2])
    for weights in (by_magnitude, by_taylor):  # exactly the student's widths, and a checkpoint that loads safely
        student.load_state_dict(weights)
        checkpoint.save(checkpoint.model_checkpoint(student, diffusion, student.state_dict()), tmp_path / "s.pt")
        rebuilt, _ = checkpoint.build(checkpoint.load(tmp_path / "s.pt", "pruned student"))  # weights_only=True
        assert rebuilt.config == student.config and rebuilt.num_parameters == UNet(student.config).num_parameters
