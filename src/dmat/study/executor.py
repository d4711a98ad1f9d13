"""Where a study's stages run: on this machine, `workers` at a time, each stage process with its share of the
CPU threads (and one GPU each where there are several); or as Ray tasks on a cluster.

A stage is one `mlflow run` of an entry point (dmat.study.stage.run_stage): MLflow stays the only hand-off
between stages and the record of what is done, so an executor only decides where and how many at once. The
graph walk (which stage waits for which) is the pipeline's; no scheduler is written here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from dataclasses import dataclass

import mlflow
import torch

from dmat.errors import DmatError
from dmat.tracking.chatter import LEVEL_VARIABLE

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch sizes its CPU thread pool from these
WORKER = "DMAT_WORKER"  # the slot a stage runs in, tagged on its run (dmat runs shows it)
_SPAWN = threading.Lock()  # os.environ is the process's: one stage starts at a time with its slot's variables


@dataclass(frozen=True)
class Slot:
    """One of `workers` places a stage runs in: its CPU threads and, with several GPUs, its GPU."""

    index: int
    threads: int
    gpu: int | None = None
    quiet: bool = False  # side by side, stages' own progress bars would interleave: the pipeline shows a line each

    def environment(self) -> dict[str, str]:
        env = {name: str(self.threads) for name in THREAD_VARIABLES} | {WORKER: str(self.index)}
        env |= {"TQDM_DISABLE": "1"} if self.quiet else {}
        return env | ({"CUDA_VISIBLE_DEVICES": str(self.gpu)} if self.gpu is not None else {})


def default_workers(gpus: int | None = None, cores: int | None = None) -> int:
    """What pays on this hardware: one stage per GPU where there are several; on a CPU of two cores or more, two
    stages sharing its cores (bench/bench_workers.py, the quick study on a 2-core CPU without bf16: --workers 2
    took 351 s against 378 s for --workers 1, 1.08x, with the same metrics to 3e-8)."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    cores = cores or os.cpu_count() or 1
    return gpus if gpus > 1 else min(2, cores)


def slots(workers: int, cores: int | None = None, gpus: int | None = None) -> list[Slot]:
    """`workers` slots sharing the cores evenly (at least one thread each) and the GPUs round-robin."""
    cores = cores or os.cpu_count() or 1
    gpus = torch.cuda.device_count() if gpus is None else gpus
    threads = max(1, cores // workers)
    return [Slot(i, threads, i % gpus if gpus > 1 else None, quiet=workers > 1) for i in range(workers)]


@contextlib.contextmanager
def spawn_environment(env: dict[str, str | None]):
    """These variables set (None: unset) while a stage process starts (it copies os.environ then), restored after."""
    with _SPAWN:
        saved = {name: os.environ.get(name) for name in env}
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class LocalExecutor:
    """Runs `fn(*args, env=...)` in the calling thread once a slot is free; the slot's variables go to the stage."""

    def __init__(self, workers: int):
        self.workers = workers
        self._free: queue.Queue[Slot] = queue.Queue()
        for slot in slots(workers):
            self._free.put(slot)

    def run(self, fn, *args, alone: bool = False):
        """`alone`: a stage that nothing runs beside (the teacher, the timings, the report) takes every slot, so
        that it gets every thread rather than its one slot's share of the cores."""
        taken = [self._free.get() for _ in range(self.workers if alone else 1)]
        env = taken[0].environment()
        if alone:
            env |= {name: str(sum(s.threads for s in taken)) for name in THREAD_VARIABLES}
        try:
            return fn(*args, env=env)
        finally:
            for slot in taken:
                self._free.put(slot)

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs each stage as a Ray task that declares its resources (`cpus` each, one GPU where the cluster has
    them); a task lost with its node is retried, and a retried stage reuses its run if it finished."""

    def __init__(self, address: str = "", cpus: int = 1, retries: int = 2):
        try:
            import ray
        except ImportError:
            raise DmatError("--executor ray needs Ray: pip install 'dmat[ray]' (make test installs it)") from None
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        env = {"MLFLOW_TRACKING_URI": _absolute(mlflow.get_tracking_uri()), "TQDM_DISABLE": "1",
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               **{k: os.environ[k] for k in (LEVEL_VARIABLE,) if k in os.environ}}  # MLflow's chatter, as here
        if not ray.is_initialized():
            ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False,
                     log_to_driver=True, **({} if address else {"num_cpus": os.cpu_count()}))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.workers = int(ray.cluster_resources().get("CPU", 1)) // cpus
        self._options = dict(num_cpus=cpus, num_gpus=1 if gpus else 0, max_retries=retries, retry_exceptions=True)
        self._threads = {name: str(cpus) for name in THREAD_VARIABLES}

    def run(self, fn, *args, alone: bool = False):
        """`alone` changes nothing here: a Ray task has the CPUs it declared, whatever else runs."""
        task = self._ray.remote(_in_ray_task).options(**self._options)
        return self._ray.get(task.remote(fn, args, self._threads))

    def close(self) -> None:
        self._ray.shutdown()


def _absolute(uri: str) -> str:
    """A relative sqlite store as an absolute one, so that a task started in another folder finds it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def _in_ray_task(fn, args, threads: dict[str, str]):
    """A stage inside a Ray worker: its node's slot is the task's CPUs (and the GPU Ray assigned it)."""
    import ray

    gpus = ray.get_gpu_ids()
    env = threads | {WORKER: ray.get_runtime_context().get_node_id()[:8]}
    return fn(*args, env=env | ({"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}))


def executor_for(name: str, workers: int, ray_address: str = ""):
    """The executor named by --executor: 'local' with `workers` (0: default_workers()) or 'ray'."""
    if name == "ray":
        return RayExecutor(ray_address)
    return LocalExecutor(workers or default_workers())
