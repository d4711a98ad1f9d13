"""Bench: how much of a model's run-to-run spread one evaluation's draws see -- the seed-to-draws sd ratio (issue 32).

A model trained once has one spread to show: its evaluation's sd over the K draws (`kid_sd`), which the answer uses
as its standard error at n = 1. Trained with several seeds, the spread that matters is the sd of the score over the
seeds. For every size of every student kind (and the teacher) trained with two or more seeds in a finished study,
this prints the sd over seeds of KID (both feature spaces), the mean sd over draws, and their ratio; a ratio above 1
means an interval from one run's draws is too narrow for a claim about the model (not this run of it). It reads the
tracking store only.

    MLFLOW_TRACKING_URI=sqlite:///$HOME/dmat-study/mlflow.db .venv/bin/python bench/bench_seed_spread.py study-digits
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dmat.report.query import load_study
from dmat.report.tables import KIND, with_keys

SPACES = (("kid", "kid_sd"), ("kid_classifier", "kid_classifier_sd"))


def spreads(evaluations) -> list[dict]:
    rows = []
    for keys, group in with_keys(evaluations).groupby([*KIND, "size_factor"], dropna=False):
        if group.model_seed.nunique() < 2:
            continue
        row = {"method": keys[0], "init": keys[1], "size_factor": keys[-1], "seeds": int(group.model_seed.nunique())}
        for score, draws in SPACES:
            if score in group and draws in group and group[score].notna().sum() > 1:
                seed_sd, draws_sd = float(group[score].std(ddof=1)), float(group[draws].mean())
                row.update({f"{score}_seed_sd": seed_sd, f"{score}_draws_sd": draws_sd,
                            f"{score}_ratio": seed_sd / draws_sd if draws_sd > 0 else np.nan})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    rows = spreads(load_study(parser.parse_args().experiment).evaluations)
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    for score, _ in SPACES:
        ratios = np.array([r[f"{score}_ratio"] for r in rows if np.isfinite(r.get(f"{score}_ratio", np.nan))])
        if len(ratios):
            print(f"{score}: seed sd / draws sd over {len(ratios)} sizes: median {np.median(ratios):.2f}, "
                  f"min {ratios.min():.2f}, max {ratios.max():.2f}")


if __name__ == "__main__":
    main()
