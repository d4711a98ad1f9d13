"""Whether a run's process still lives: `tracked_run` tags every run with its host, pid and the process's start
time and renews a heartbeat tag every minute while the process lives. A RUNNING run is stale when its process on
this host no longer exists (or its pid now belongs to a later process), or, for a run on another host (or one
older than these tags), when its last sign of life is older than `minutes`."""

from __future__ import annotations

import socket
import time

import psutil

from dmat.tracking.vocabulary import HEARTBEAT, OWNER_HOST, OWNER_PID, OWNER_STARTED

STALE_MINUTES = 10.0  # ten missed heartbeats


def why_stale(run, minutes: float = STALE_MINUTES) -> str | None:
    """Why a RUNNING run's process is taken to be gone, or None if it may still be running."""
    tags = run.data.tags
    host, pid = tags.get(OWNER_HOST), tags.get(OWNER_PID)
    if host == socket.gethostname() and pid:
        gone = _process_gone(int(pid), tags.get(OWNER_STARTED))
        return f"its process {pid} on {host} is gone" if gone else None
    idle = (time.time() - float(tags.get(HEARTBEAT) or run.info.start_time / 1000)) / 60
    if idle < minutes:
        return None
    return f"no heartbeat for {idle:.0f} minute(s) (process {pid or '?'} on {host or 'an unknown host'})"


def _process_gone(pid: int, started: str | None) -> bool:
    try:
        process = psutil.Process(pid)
        reused = started is not None and abs(process.create_time() - float(started)) > 1.0
        return reused or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
