"""The one registry of metrics (dmat.config.metrics), of student initialisations (dmat.stages.inits) and of the
command behind each role: what evaluation logs is declared there, and its readers take their names from it."""

from __future__ import annotations

import torch

from dmat import tracking
from dmat.config import INITS, metrics
from dmat.config.metrics import HIGHER, LOWER, METRICS, NEITHER, REFERENCES, per_reference


def declared(name: str) -> bool:
    return name in METRICS or any(name == per_reference(m, r) for m in METRICS for r in REFERENCES)


def test_every_metric_says_what_it_measures_and_which_way_is_better():
    for metric in METRICS.values():
        assert metric.measures and metric.better in (LOWER, HIGHER, NEITHER), metric
    assert METRICS["fid"].lower_is_better and not METRICS["precision"].lower_is_better
    assert metrics.better_text("kid") == "lower is better" and metrics.better_text("quality_n") == ""


def test_what_evaluation_computes_is_declared():
    """The quality, memorisation and trajectory scores an evaluation logs, computed on small random inputs."""
    from dmat.evaluation import memorisation, quality, trajectories

    g = torch.Generator().manual_seed(0)
    generated = torch.randn(40, 8, generator=g, dtype=torch.float64)
    references = {r: torch.randn(80, 8, generator=g, dtype=torch.float64) for r in REFERENCES}
    floors = {r: quality.summarised(quality.floor_values(f, 20, 3, 0)) for r, f in references.items()}
    logged = dict(quality.quality_metrics(generated, references, "heldout", 20, 3, 0, floors))
    images = {k: torch.rand(30, 1, 8, 8, generator=g) * 2 - 1 for k in ("generated", "train", "held_out")}
    logged.update(memorisation.memorisation(images, {k: torch.randn(30, 8, generator=g) for k in images}).metrics)
    states = torch.randn(4, 6, 1, 8, 8, generator=g)
    traj = trajectories.Trajectory(states, list(range(6)))
    logged.update(trajectories.compare(traj, trajectories.Trajectory(states + 0.1, list(range(6)))))
    assert [name for name in logged if not declared(name)] == []


def test_the_readers_take_their_names_from_the_registry():
    from dmat.report import frontier, query, tables
    from dmat.tracking import registry

    assert registry.SCORES == metrics.HEADLINE == ("kid", "fid", "fid_floor", "precision", "recall")
    assert query.CORE_EVALUATION_METRICS == metrics.REQUIRED and query.CHANGED_METRICS == metrics.LEGACY
    assert tables.SUMMARY_METRICS == metrics.SUMMARY and tables.MEMORISATION_COLUMNS == metrics.MEMORISATION
    assert tables.QUALITY_SCORES == ("kid", "kid_floor", "fid", "fid_floor", "kid_train", "kid_heldout", "fid_train",
                                     "fid_heldout")
    assert frontier.GRID_KEYS == ("grid_kid", "grid_fid", "grid_flops_per_image", "grid_latency_ms_per_image")
    assert query.BUDGET_COLUMNS[:4] == ("best_epoch", "epochs_run", "optimizer_steps", "train_images")


def test_every_init_has_its_function_and_every_role_one_command():
    from dmat.stages import resume
    from dmat.stages.inits import INITIALISATIONS

    assert tuple(INITIALISATIONS) == INITS
    assert INITIALISATIONS["random"].weights(None, None) is None
    assert [name for name, init in INITIALISATIONS.items() if init.same_resolution] == ["pruned"]
    assert resume.resume_command(tracking.STUDENT, "abc") == "dmat distill --resume abc"
    assert resume.resume_command(tracking.TEACHER, "abc") == "dmat teacher --resume abc"
    assert set(resume.COMMANDS) == set(tracking.MODEL_ROLES) <= set(tracking.COMMAND_OF)
