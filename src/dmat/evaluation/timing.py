"""What sampling from a model costs: checkpoint size, wall time and memory (measured, never assumed).

Parameters and FLOPs are `dmat.model.flops`'s: training logs them too."""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import torch
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.errors import DmatError
from dmat.model import checkpoint

MEMORY_SHARE = 0.5  # of the memory available, what an evaluation's samples may take: models and real data need the rest


def checkpoint_mb(run_id: str, name: str = checkpoint.BEST) -> float:
    """Size on disk of the run's checkpoint (weights + configs), in MiB."""
    artifact = f"{tracking.CHECKPOINT_DIR}/{name}"
    sizes = [f.file_size for f in MlflowClient().list_artifacts(run_id, tracking.CHECKPOINT_DIR) if f.path == artifact]
    if not sizes or sizes[0] is None:  # not listed with a size: download it (into a folder that is removed)
        with tempfile.TemporaryDirectory() as tmp:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
                        ).stat().st_size / 2**20
    return sizes[0] / 2**20


def timed(fn, device: torch.device):
    """(fn(), seconds), waiting for queued GPU work so the time is the real one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def median_seconds(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device)[1] for _ in range(repeats))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since `reset_peak_memory`. Otherwise the process's peak RSS (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def sample_bytes(channels: int, image_size: int, feature_dims: int) -> int:
    """Memory one generated sample holds during an evaluation: its float32 image twice (the sampled batches, then
    their concatenation) and its features in every space."""
    return 4 * (2 * channels * image_size**2 + feature_dims)


def check_fits_in_memory(num_samples: int, bytes_per_sample: int, what: str) -> None:
    """Refuse a sample count whose samples cannot fit in the memory available, before any run exists: it would run
    for hours, its memory growing, then swap or be killed."""
    available = psutil.virtual_memory().available
    most = int(available * MEMORY_SHARE) // bytes_per_sample
    if num_samples > most:
        raise DmatError(f"num-samples {num_samples} needs about {num_samples * bytes_per_sample / 2**30:.1f} GiB for "
                        f"its samples ({bytes_per_sample} bytes each: {what}), more than half of the "
                        f"{available / 2**30:.1f} GiB of memory available: use at most {most}")
