"""Multi-process training under torchrun (DistributedDataParallel), and its no-op single-process twin.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them everything here is a plain single process.
Rank 0 alone talks to MLflow and writes checkpoints; every rank trains on its own shard of each
global batch (`--batch-size` stays the global batch, split evenly across processes).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from dmat.errors import DmatError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process gets its own GPU (cuda:LOCAL_RANK); other devices are shared."""
    if device.type == "cuda" and world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def setup(device: torch.device) -> None:
    """Join the process group (nccl on CUDA, gloo otherwise) once; nothing to do in a single process."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def per_process_batch(batch_size: int) -> int:
    n = world_size()
    if batch_size % n:
        raise DmatError(f"batch-size {batch_size} is the global batch and must divide evenly over {n} processes")
    return batch_size // n


def train_sampler(ds: Dataset, seed: int) -> DistributedSampler:
    """This process's shard of a per-epoch permutation; `set_epoch` makes each epoch's order reproducible."""
    return DistributedSampler(ds, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model that computes losses: DDP (gradients averaged over processes) or the model itself."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum per-process totals (loss sums, image counts) so rank 0 logs whole-epoch figures."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def min_over_processes(value: int, device: torch.device) -> int:
    """The smallest value any process found (a micro-batch that fits everywhere, so all take the same steps)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def accumulating(trainer: torch.nn.Module, last: bool):
    """DDP averages gradients over processes on the last micro-batch of a batch only, not on each one."""
    if last or not isinstance(trainer, DistributedDataParallel):
        return contextlib.nullcontext()
    return trainer.no_sync()


def from_main(obj):
    """Rank 0's value of `obj` on every process (validation results, stop decisions)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process, so all stop together instead of one hanging."""
    finite = torch.isfinite(loss.detach()).all()
    if world_size() > 1:
        finite = finite.to(torch.int32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average gradients of parameters DDP does not own (a training loss's own trainable parameters)."""
    if world_size() == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world_size()
