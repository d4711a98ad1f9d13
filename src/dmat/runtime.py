"""Where code runs, how it is seeded, and how it stops: shared by training and evaluation, importing neither."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time

import psutil
import torch

from dmat import distributed
from dmat.errors import DmatError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what kill, timeout, schedulers and container stops send
QUIET_STAGE = "DMAT_QUIET_STAGE"  # "1" in the processes a quiet study starts (dmat.tracking.chatter)
STOP_WITH = "DMAT_STOP_WITH"  # pid:start time of the process that started this one (a stage's pipeline)
STARTER_POLL_SECONDS = 2.0


PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise DmatError(f"precision must be {', '.join(PRECISIONS)}, got {name!r}")
    return name


COMPILES = ("auto", "on", "off")  # torch.compile the training step; auto: measured (dmat.training.autotune)


def check_compile(name: str) -> str:
    if name not in COMPILES:
        raise DmatError(f"compile must be {', '.join(COMPILES)}, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """CUDA > MPS > CPU when `name` is "auto"; otherwise exactly the device asked for, if this machine has it."""
    if name == "auto":
        if torch.cuda.is_available():
            return distributed.local_device(torch.device("cuda"))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmatError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmatError("device cuda was asked for but CUDA is not available: use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DmatError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise DmatError("device mps was asked for but MPS (Apple GPU) is not available: use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DmatError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return distributed.local_device(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_precision(name: str, device: torch.device) -> str:
    """"fp32" or "bf16". `auto` follows the hardware, never a timing, so the same command on the same machine
    always trains and samples at the same precision (a timing under load picks either): bf16 on CPUs that compute
    it natively (AVX512-BF16 or AMX: 1.2-1.4x faster for dmat's UNet), fp32 on CPUs that emulate it (~9x slower)
    and on GPUs (on an H200 bf16 autocast was slower than fp32 for these small networks)."""
    if check_precision(name) != "auto":
        return name
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


CPU_BF16 = "DMAT_CPU_BF16"  # "0" or "1": what `auto` takes this CPU to have, whatever its flags say (tests, CI)


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX among the CPU's flags, unless $DMAT_CPU_BF16 says otherwise (so CI can run the
    precision-dependent tests as a CPU with bf16 and as one without, on one machine)."""
    said = os.environ.get(CPU_BF16, "")
    if said not in ("", "0", "1"):
        raise DmatError(f"{CPU_BF16} must be 0 (a CPU without native bf16) or 1 (with), got {said!r}")
    if said:
        return said == "1"
    return _cpu_flags() & {"avx512_bf16", "amx_bf16"} != set()


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; elsewhere none are known, so `auto` keeps fp32 there)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:
        return set()


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the network's matrix work; losses, EMA, optimizer state and metrics stay fp32
    (autocast runs mse_loss in fp32, and the sampler's updates promote bf16 outputs to fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (initial weights, data order, dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM. A KeyboardInterrupt, so code that catches Exception (one failed size of many)
    still stops; `signum` gives the conventional exit status 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Stopping:
    """The process-wide state of `stop_signals` (signal handlers are process-wide too)."""

    depth = 0  # nested stop_signals blocks
    held = 0  # nested hold_signals blocks
    pending: int | None = None  # a signal that arrived while held
    stopping = False  # Interrupted was raised: later signals are only noted
    previous: dict = {}


def _on_signal(signum, frame) -> None:
    if _Stopping.stopping:
        print(f"dmat: {signal.Signals(signum).name} again: already stopping (saving the last finished epoch and "
              "marking the run), please wait", file=sys.stderr, flush=True)
    elif _Stopping.held:
        _Stopping.pending = _Stopping.pending or signum
    else:
        _Stopping.stopping = True
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals():
    """Inside this block SIGINT and SIGTERM raise `Interrupted` once; any later signal is noted and ignored
    until the block ends, so the way out (saving last.pt, marking the run KILLED) cannot itself be cut
    short. Nests; does nothing outside the main thread, where Python cannot handle signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _Stopping.depth == 0:  # a signal ignored on purpose (a background job's SIGINT) stays ignored
        _Stopping.previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        _Stopping.stopping, _Stopping.pending = False, None
    _Stopping.depth += 1
    try:
        yield
    finally:
        _Stopping.depth -= 1
        if _Stopping.depth == 0:
            for s, handler in _Stopping.previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


def watched_by_me() -> dict[str, str]:
    """The environment entry that makes a process started now stop when this one dies (see stop_with_starter)."""
    return {STOP_WITH: f"{os.getpid()}:{psutil.Process().create_time():.2f}"}


def stop_with_starter() -> None:
    """In a process a study started (STOP_WITH set): SIGTERM this process once the process that started it is
    gone, so a stage whose pipeline (or Ray worker) was killed, kill -9 included, stops as on Ctrl-C, its run
    KILLED with its last.pt for the rerun to resume, instead of training on where no pipeline waits for it.
    The starter is watched by pid, not as the parent: `mlflow run` puts a process of its own in between."""
    watched = os.environ.get(STOP_WITH, "")
    pid, _, started = watched.partition(":")
    if pid.isdigit() and started:
        threading.Thread(target=_stop_when_gone, args=(int(pid), float(started)), name="dmat-stop-with-starter",
                         daemon=True).start()


def _stop_when_gone(pid: int, started: float) -> None:
    while True:
        try:
            starter = psutil.Process(pid)
            if abs(starter.create_time() - started) > 1.0:  # the pid now belongs to a later process
                break
            if starter.status() == psutil.STATUS_ZOMBIE:  # killed (kill -9), not yet reaped by its parent: gone
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(STARTER_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def hold_signals():
    """Defer a stop signal until this block (e.g. writing a checkpoint, creating a run) is complete, so
    it never leaves half a file or a run nobody will mark; the signal is raised when the block ends."""
    _Stopping.held += 1
    try:
        yield
    finally:
        _Stopping.held -= 1
        if not _Stopping.held and _Stopping.pending and not _Stopping.stopping:
            signum, _Stopping.pending, _Stopping.stopping = _Stopping.pending, None, True
            raise Interrupted(signum)


def quiet_stage_output() -> None:
    """In a stage process of a quiet study (QUIET_STAGE "1"): standard output goes nowhere, standard error still
    shows. The pipeline prints each stage's result line itself; the processes this one starts print as usual."""
    if os.environ.pop(QUIET_STAGE, None) == "1":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
