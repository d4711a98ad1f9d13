"""Students that start from the teacher: structured channel pruning down to a student's widths."""

from __future__ import annotations

import dataclasses

import mlflow
import pytest
import torch

from conftest import tiny_train
from dmat import tracking
from dmat.data import load_splits
from dmat.errors import DmatError
from dmat.distill import train_student
from dmat.pruning import channel_map, prune_weights
from dmat.unet import UNet, UNetConfig


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
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
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
    run_id = train_student(tiny_train(epochs=1), 0.5, teacher_run_id, init="pruned", student_steps=4,
                           experiment="dmat-test-pruning")
    run = mlflow.get_run(run_id)
    assert run.data.tags[tracking.INIT] == "pruned" and run.data.params["init"] == "pruned"
