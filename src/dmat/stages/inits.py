"""A student's starting weights: one table of init name -> how its weights are set.

Adding an initialisation = its function here + one entry of INITIALISATIONS + its name in
`dmat.config.training.INITS` (what the CLI and the config check offer) + its test. The report names a student by its
init tag (a non-random one: "distill, pruned init").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dmat.config.training import INITS, PRUNED, RANDOM
from dmat.model.pruning import prune_weights

# (student, splits) -> None: sets the student's weights before training (model_run's ModelPlan.initial_weights)
InitialWeights = Callable[..., None]


def _random(teacher, saliency) -> InitialWeights | None:
    """The UNet's own random initialisation: nothing to do."""
    return None


def _pruned(teacher, saliency) -> InitialWeights:
    """The teacher's weights cut down to the student's widths by channel pruning (dmat.model.pruning), its channels
    ranked by `saliency(splits)` (None: by weight magnitude)."""
    return lambda student, splits: prune_weights(teacher, student, saliency(splits))


@dataclass(frozen=True)
class Initialisation:
    # (teacher UNet, saliency: splits -> channel ranking or None) -> the student's initial weights, or None
    weights: Callable[..., InitialWeights | None]
    same_resolution: bool = False  # needs the teacher's resolution (pruning maps the UNet's attention by resolution)


INITIALISATIONS = {RANDOM: Initialisation(_random), PRUNED: Initialisation(_pruned, same_resolution=True)}
assert tuple(INITIALISATIONS) == INITS, "every init of dmat.config.training.INITS has its function here"
