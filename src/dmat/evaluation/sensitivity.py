"""The sensitivity check: which corruptions of real images does each metric see?

Real held-out images (no model and no extractor trained on them) under known, graded corruptions (corruptions.py:
noise, blur, shift, class mix) are scored exactly like a model: the same matched N (N = min(num_samples, half the
held-out split), as an evaluation), the same K seeded draws, every metric of every feature space (spaces.py).
Draw k scores the corrupted A_k against B_k, the pair the floor scores as A_k against B_k itself, so level 0 is the
floor by construction and any change is the corruption's. A metric *detects* a level when its mean over the draws
is above the floor's mean + Z_DETECT x the floor's sd over draws: outside the spread a user compares a model with.
The result, metric x corruption -> smallest level detected (None: none up to the largest tried), is logged as a
run (dmat.role=sensitivity) with the full table (every level's score, floor, sd and z) as an artifact.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import torch

from dmat import tracking
from dmat.config import TrainConfig
from dmat.config.metrics import HEADLINE_SPACE_PARAM
from dmat.data import load_dataset, load_held_out
from dmat.errors import DmatError
from dmat.evaluation import corruptions, features, quality, spaces
from dmat.runtime import resolve_device

TABLE = tracking.SENSITIVITY_TABLE  # the run's dmat.role is tracking.SENSITIVITY
Z_DETECT = 2.0


def held_out_with_labels(dataset: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's held-out images [n, C, H, W] in [-1, 1] and their class labels."""
    held_out = load_held_out(dataset, image_size)
    if held_out is None:
        raise DmatError(f"dataset {dataset} has no held-out split: the sensitivity check scores unseen real images")
    return torch.stack([held_out[i] for i in range(len(held_out))]), _labels(held_out.base)


def train_with_labels(dataset: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's train images (its held-out split left out) and labels: class mix's replacements, so that no
    replacement is an image of the held-out half it is scored against."""
    train = load_dataset(dataset, image_size)
    return torch.stack([train[i] for i in range(len(train))]), _labels(train.base)


def _labels(base) -> torch.Tensor:
    return base.tensors[1] if hasattr(base, "tensors") else torch.as_tensor(base.targets)


def _row(metric: str, kind: str, level: float, score: float, floor: float, sd: float) -> dict:
    return {"metric": metric, "corruption": kind, "level": level, "score": score, "floor": floor, "floor_sd": sd,
            "z": (score - floor) / sd, "detected": bool(score > floor + Z_DETECT * sd)}


def measure(images: torch.Tensor, labels: torch.Tensor, extractors: dict, n: int, k: int, seed: int,
            levels: dict | None = None, batch_size: int = 500,
            donors: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """One row per metric, corruption and level (see _row), scored as the module docstring says; `extractors`:
    space name -> extractor, the headline space's metrics under the plain names (fid, kid); `donors`: the images
    (and labels) class mix draws its replacements from, none of them in the set scored against."""
    levels = levels or corruptions.LEVELS
    reference = {space: quality.extract(e, images, batch_size) for space, e in extractors.items()}
    floors = {space: quality.matched_scores(f, f, n, k, seed, paired=True) for space, f in reference.items()}
    rows = []
    for kind, kind_levels in levels.items():
        for level in kind_levels:
            changed = corruptions.corrupt(kind, images, labels, level, seed, donors)
            for space, extractor in extractors.items():
                scores = quality.matched_scores(quality.extract(extractor, changed, batch_size), reference[space], n, k,
                                                seed, floor=False, paired=True)
                for m in quality.METRICS:
                    name = m if space == spaces.HEADLINE_SPACE else spaces.in_space(m, space)
                    floor = floors[space]
                    rows.append(_row(name, kind, level, scores[m], floor[f"{m}_floor"], floor[f"{m}_floor_sd"]))
    return rows


def smallest_detected(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """metric -> corruption -> the smallest level detected (None where no level tried is)."""
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        cell = out.setdefault(row["metric"], {}).setdefault(row["corruption"], None)
        if row["detected"] and (cell is None or row["level"] < cell):
            out[row["metric"]][row["corruption"]] = row["level"]
    return out


def table_text(smallest: dict, levels: dict | None = None) -> str:
    """The metric x corruption table as Markdown: the smallest level detected, `> max` where none was."""
    levels = levels or corruptions.LEVELS
    kinds = list(levels)
    lines = ["| metric | " + " | ".join(f"{k} ({corruptions.UNITS[k]})" for k in kinds) + " |",
             "|---" * (len(kinds) + 1) + "|"]
    for metric, cells in smallest.items():
        shown = [f"{cells[k]:g}" if cells.get(k) is not None else f"> {max(levels[k]):g}" for k in kinds]
        lines.append(f"| {metric} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def run_sensitivity(dataset: str = "digits", image_size: int | None = None, num_samples: int = 2000,
                    floor_draws: int = 10, seed: int = 0, device: str = "auto",
                    feature_extractor_run_id: str | None = None, experiment: str | None = None) -> str:
    """Run the sensitivity check on a data set's held-out split as a run of its own; returns its id."""
    size = image_size or TrainConfig(dataset=dataset).resolved_image_size()
    tracking.check_tracking_reachable()
    images, labels = held_out_with_labels(dataset, size)
    n = quality.matched_n(num_samples, [len(images)])
    quality.check_sample_count(n, spaces.RANDCNN_DIM, f"N = min(num-samples={num_samples}, half the held-out split)")
    torch_device = resolve_device(device)
    extractor_run_id, classifier = features.feature_extractor_for(dataset, size, feature_extractor_run_id,
                                                                  torch_device, experiment)
    extractors = {spaces.HEADLINE_SPACE: spaces.RandomCNNFeatures(images.shape[1]).to(torch_device),
                  "classifier": classifier}
    tags = {tracking.ROLE: tracking.SENSITIVITY, tracking.DATASET: dataset, tracking.IMAGE_SIZE: str(size),
            tracking.FEATURE_EXTRACTOR_RUN_ID: extractor_run_id}
    with tracking.tracked_run(f"sensitivity-{dataset}-{size}px", tags, experiment) as run:
        mlflow.log_params({"num_samples": num_samples, "floor_draws": floor_draws, "seed": seed, "quality_n": n,
                           HEADLINE_SPACE_PARAM: spaces.HEADLINE_SPACE, "reference": "heldout", "z_detect": Z_DETECT})
        rows = measure(images, labels, extractors, n, floor_draws, seed, donors=train_with_labels(dataset, size))
        smallest = smallest_detected(rows)
        mlflow.log_metrics({f"detect_{metric}_{kind}": level for metric, cells in smallest.items()
                            for kind, level in cells.items() if level is not None})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(TABLE).name
            path.write_text(json.dumps({"rows": rows, "smallest": smallest, "levels": corruptions.LEVELS,
                                        "units": corruptions.UNITS, "quality_n": n, "draws": floor_draws,
                                        "z_detect": Z_DETECT}, indent=1))
            (Path(tmp) / "table.md").write_text(table_text(smallest) + "\n")
            mlflow.log_artifacts(tmp, artifact_path=str(Path(TABLE).parent))
        print(table_text(smallest))
        return run.info.run_id
