"""Bench: how stable the real-vs-real floor's sd is over evaluation seeds, from the evaluation's own K = 10 draws
(before) and from floor.FLOOR_DRAWS cached draws (after); and whether a perfect generator is inside it.

For digits and mnist5k at their study resolutions, in both feature spaces (the random CNN, and a classifier trained
here briefly in a temporary store), and for each of 20 evaluation seeds: the held-out split is the reference, N is
half of it, and the perfect generator is 1,000 other real images of the data set (its training part), drawn with
the seed. Per row it prints the ratio max/min of kid_floor_sd and fid_floor_sd over the seeds, how many seeds put
the perfect generator's KID and FID within 2 floor-sd of the floor (and its z = (score - floor) / floor sd: mean
over seeds, and the largest), and the seconds one floor estimate took.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_floor.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import mlflow
import torch

from dmat.config import preset_for
from dmat.config.evaluation import EvalConfig
from dmat.data import load_dataset, load_held_out
from dmat.evaluation import features, floor, quality, spaces


def _images(ds) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(len(ds))])


def _extractors(dataset: str, size: int) -> dict:
    run_id = features.train_feature_extractor(dataset, size, epochs=3)
    return {spaces.HEADLINE_SPACE: spaces.RandomCNNFeatures(1),
            "classifier": features.load_feature_extractor(run_id, dataset, size)}


def _row(pool: torch.Tensor, reference: torch.Tensor, draws: int, seeds: int) -> dict:
    """Over `seeds` evaluation seeds: the floor's sd ratio max/min, the seeds inside +-2 sd, seconds per floor."""
    k, n = EvalConfig().floor_draws, len(reference) // 2
    sds, inside, zs, seconds = {"kid": [], "fid": []}, {"kid": 0, "fid": 0}, {"kid": [], "fid": []}, 0.0
    for seed in range(seeds):
        perfect = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(1000 + seed))[:1000]]
        start = time.perf_counter()
        found = quality.summarised(quality.floor_values(reference, n, draws, seed))
        seconds += time.perf_counter() - start
        scores = {**quality.matched_scores(perfect, reference, n, k, seed, floor=False), **found}
        for m in sds:
            sds[m].append(scores[f"{m}_floor_sd"])
            zs[m].append((scores[m] - scores[f"{m}_floor"]) / scores[f"{m}_floor_sd"])
            inside[m] += abs(zs[m][-1]) <= 2
    return {"draws": draws, **{f"{m}_floor_sd_max_over_min": round(max(v) / min(v), 2) for m, v in sds.items()},
            **{f"{m}_inside_2sd": f"{inside[m]}/{seeds}" for m in inside},
            **{f"{m}_z_mean_max": [round(sum(v) / len(v), 2), round(max(v, key=abs), 2)] for m, v in zs.items()},
            "seconds_per_floor": round(seconds / seeds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        for dataset in ("digits", "mnist5k"):
            size = preset_for(dataset).image_size
            train, held_out = _images(load_dataset(dataset, size)), _images(load_held_out(dataset, size))
            for space, extractor in _extractors(dataset, size).items():
                pool, reference = quality.extract(extractor, train), quality.extract(extractor, held_out)
                for draws in (EvalConfig().floor_draws, floor.FLOOR_DRAWS):
                    row = {"dataset": dataset, "image_size": size, "space": space, "quality_n": len(held_out) // 2,
                           **_row(pool, reference, draws, args.seeds)}
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
