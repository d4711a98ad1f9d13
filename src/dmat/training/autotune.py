"""Whether to `torch.compile` the training step, chosen by measurement, not by a guess.

`tune` times a few real training steps (forward, backward, optimizer step) of each candidate -- eager and
`torch.compile`d, at the run's precision -- on the run's own model, criterion and first batch, with the same noise
and dropout for every candidate. It picks the faster whose first-step loss stays within `tolerance` of eager's on
the same batch and noise; eager whenever in doubt: a candidate that fails, or one faster by less than the timing
noise (`margin`).

Why measure: on an H200 `torch.compile` was 1.4-1.9x faster, on CPUs it gained nothing and its warm-up costs more
than it saves, so under `compile="auto"` compiling is tried on CUDA only. Precision is not measured: a timing
under load picks either, so it is decided by the hardware (runtime.resolve_precision) and given here. The model,
the criterion and the global random streams are left as found (the steps run on a copy). Pure torch: what is
logged, and where, is the caller's business (`Tuning.params`, `metrics`, `as_dict`)."""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from dmat.errors import DmatError
from dmat.runtime import autocast, check_compile

TUNE_SEED = 20_011  # the noise and dropout every candidate's steps draw
NOT_TRIED = "not tried: "


@dataclass
class Candidate:
    precision: str
    compile: str  # "on" or "off"
    step_seconds: float = math.nan  # median of the timed steps
    warmup_seconds: float = math.nan  # the untimed first step(s): compiling, allocator and cache warm-up
    loss: float = math.nan  # the first step's loss, on the same batch and noise as every candidate's
    error: str | None = None  # why it was not timed to the end (failed, non-finite, too slow, loss off)

    @property
    def name(self) -> str:
        return self.precision + ("+compile" if self.compile == "on" else "")


@dataclass
class Tuning:
    precision: str  # "fp32" or "bf16"
    compile: str  # "on" or "off"
    reason: str  # forced, measured, or why the measurement fell back to fp32 eager
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # what tuning cost

    @property
    def params(self) -> dict[str, str]:
        return {"resolved.precision": self.precision, "resolved.compile": self.compile}

    def metrics(self) -> dict[str, float]:
        """Each timed candidate's median step time, e.g. `autotune.bf16.step_seconds`."""
        timed = {f"autotune.{c.name}.step_seconds": c.step_seconds for c in self.candidates
                 if math.isfinite(c.step_seconds)}
        return {**timed, "autotune.seconds": self.seconds} if timed else {}

    def as_dict(self) -> dict:
        """As JSON has it: a figure not measured is null."""
        candidates = [{"name": c.name, **{k: None if isinstance(v, float) and math.isnan(v) else v
                                           for k, v in asdict(c).items()}} for c in self.candidates]
        return {**asdict(self), "candidates": candidates}


def forced(precision: str, compile: str, device: torch.device) -> Tuning | None:
    """The tuning when there is nothing to measure (compile given, or one candidate left on this device); else
    None. `precision` is already resolved: "fp32" or "bf16"."""
    check_compile(compile)
    if precision not in ("fp32", "bf16"):
        raise DmatError(f"autotune needs a resolved precision, fp32 or bf16, got {precision!r}")
    runnable, skipped = _split(candidates(precision, compile, device))
    if len(runnable) > 1:
        return None
    only = runnable[0]
    why = "forced" if compile != "auto" else f"the only candidate on {device.type}"
    return Tuning(only.precision, only.compile, why, skipped)


def candidates(precision: str, compile: str, device: torch.device) -> list[Candidate]:
    """Eager first (the reference), then compiled where it may pay; one that cannot carries why it is not tried.
    A forced compile is the only candidate."""
    out = [Candidate(precision, c) for c in ([compile] if compile != "auto" else ["off", "on"])]
    for c in out:
        if compile == "auto" and c.compile == "on" and device.type != "cuda":
            c.error = NOT_TRIED + f"compiling on {device.type} costs more than it saves in a run (--compile on to try)"
    return out


def _split(found: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    return [c for c in found if c.error is None], [c for c in found if c.error is not None]


def tune(model: torch.nn.Module, criterion, batch: torch.Tensor, device: torch.device, precision: str,
         compile: str = "auto", steps: int = 3, tolerance: float = 0.05, margin: float = 0.1) -> Tuning:
    """The fastest candidate for training `model` under `criterion` on `batch` (see the module's doc): `steps`
    steps of each are timed after one untimed warm-up step, whose loss is the one compared."""
    fixed = forced(precision, compile, device)
    if fixed is not None:
        return fixed
    start = time.perf_counter()
    runnable, skipped = _split(candidates(precision, compile, device))
    batch = batch.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for index, candidate in enumerate(runnable):
            _measure(candidate, runnable[0] if index else None, model, criterion, batch, device, steps, index)
    for param in getattr(criterion, "trainable_parameters", list)():
        param.grad = None
    choice = choose(runnable, tolerance, margin)
    choice.candidates += skipped
    choice.seconds = time.perf_counter() - start
    return choice


def choose(candidates: list[Candidate], tolerance: float = 0.05, margin: float = 0.1) -> Tuning:
    """The fastest candidate whose loss is within `tolerance` (relative) of the first's (the eager reference),
    if it beats the reference by more than `margin`; else the reference, also when that failed."""
    reference = candidates[0]
    if reference.error or not math.isfinite(reference.step_seconds):
        return Tuning(reference.precision, "off", f"{reference.name} failed, so not measured: {reference.error}",
                      candidates)
    for c in candidates[1:]:
        if c.error is None and not abs(c.loss - reference.loss) <= tolerance * abs(reference.loss):
            c.error = f"loss {c.loss:.5g} is not within {tolerance:.0%} of {reference.name}'s {reference.loss:.5g}"
    valid = [c for c in candidates if c.error is None and math.isfinite(c.step_seconds)]
    best = min(valid, key=lambda c: c.step_seconds)
    if best is not reference and best.step_seconds < reference.step_seconds * (1 - margin):
        speedup = reference.step_seconds / best.step_seconds
        reason = f"measured: {best.name} {speedup:.2f}x {reference.name}"
        return Tuning(best.precision, best.compile, reason, candidates)
    return Tuning(reference.precision, reference.compile,
                  f"measured: nothing beats {reference.name} by more than {margin:.0%}", candidates)


def _measure(candidate: Candidate, baseline: Candidate | None, model, criterion, batch, device, steps: int,
             index: int) -> None:
    """Time `steps` training steps of a copy of `model` as `candidate` says, after one untimed warm-up step;
    stops early (noted as its error) once a step is 3x slower than `baseline`'s median. The warm-up step draws
    the same noise and dropout for every candidate, the timed steps their own (`index`): an criterion that
    caches work by its inputs (a shared teacher's outputs) gives no candidate the others' work for free."""
    work = copy.deepcopy(model).train()
    trainer = compiled(work, candidate.compile)
    optimizer = torch.optim.AdamW(work.parameters(), foreach=True)
    noise = torch.Generator(device).manual_seed(TUNE_SEED)
    torch.manual_seed(TUNE_SEED)  # dropout: the same masks for every eager candidate's first step
    times = []
    try:
        for i in range(1 + steps):
            if i == 1:
                noise.manual_seed(TUNE_SEED + 1 + index)
            seconds, loss = _step(trainer, criterion, batch, optimizer, candidate.precision, noise, device)
            if i == 0:
                candidate.warmup_seconds, candidate.loss = seconds, loss
            else:
                times.append(seconds)
            if not math.isfinite(loss):
                raise DmatError(f"non-finite loss {loss}")
            if baseline is not None and seconds > 3 * baseline.step_seconds and i > 0:
                raise DmatError(f"over 3x slower than {baseline.name}: stopped after {i} timed step(s)")
    except Exception as exc:  # noqa: BLE001 - a candidate that fails is not chosen; fp32 eager is the fallback
        candidate.error = f"{type(exc).__name__}: {exc}"
    finally:
        candidate.step_seconds = statistics.median(times) if times else math.nan
        del work, trainer, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _step(trainer, criterion, batch, optimizer, precision: str, noise, device) -> tuple[float, float]:
    _synchronize(device)
    start = time.perf_counter()
    with autocast(device, precision):
        loss, _ = criterion.loss(trainer, batch, noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()  # synchronizes too
    _synchronize(device)
    return time.perf_counter() - start, value


def compiled(trainer: torch.nn.Module, compile: str) -> torch.nn.Module:
    """`trainer` compiled when `compile` is "on" (the weights stay the module's own: state_dict is unchanged)."""
    return torch.compile(trainer) if compile == "on" else trainer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
