"""How the command line ends when something goes wrong: every DmatError becomes one line on stderr and exit status 2;
Ctrl-C or SIGTERM one line saying what became of the run (exit status 128 + the signal); anything unexpected one line
naming a log file that holds the full traceback (exit status 1)."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import tempfile
import time
import traceback

import click

from dmat.errors import DmatError


class _RaisedAnyway(logging.Filter):
    """MLflow's SQL store logs the whole traceback of a database error it then raises (two of them, 65 lines, for a
    store that turns read-only mid-run): the error reaches the command, which says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


STORE_LOGGER = "mlflow.store.db.utils"  # where MLflow's SQL store logs a database error before it raises it
_QUIET = _RaisedAnyway()


def friendly_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from dmat.runtime import (
            stop_signals,  # SIGTERM like Ctrl-C for the whole command (imports torch: not at --help)
        )

        logging.getLogger(STORE_LOGGER).addFilter(_QUIET)
        try:
            with stop_signals():
                return func(*args, **kwargs)
        except DmatError as exc:
            _fail(f"error: {_with_notes(exc)}", 2)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            notes = f": {_notes(exc)}" if _notes(exc) else ""
            _fail(f"interrupted ({signal.Signals(signum).name}){notes}", 128 + signum)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - a tracking server gone, or the last resort
            if gone := _server_gone(exc) or _store_read_only(exc):
                _fail(f"error: {gone}" + (f"; {_notes(exc)}" if _notes(exc) else ""), 2)
            # the last resort: one line here, the traceback in a file
            summary = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            _fail(f"error: unexpected {summary}" + (f"; {_notes(exc)}" if _notes(exc) else "") + _saved_traceback(), 1)

    return wrapper


def _server_gone(exc: Exception) -> str | None:
    """MLflow's error once its bounded retries (cli.main.HTTP_DEFAULTS) to a tracking server are used up, as one line
    that says what to do; None for any other error."""
    text = str(exc)
    if type(exc).__name__ != "MlflowException" or not text.startswith("API request to ") or "failed" not in text:
        return None
    import mlflow

    why = text.split("exception", 1)[-1].strip()[:200]
    return (f"tracking server {mlflow.get_tracking_uri()} stopped answering ({why}): when it is back, `dmat runs --stale --mark-killed` lists the runs it cut short and how to resume them")


READ_ONLY = ("attempt to write a readonly database", "Read-only file system")


def _store_read_only(exc: BaseException) -> str | None:
    """A store that became read-only while the command ran (a check before the run catches one that already was),
    as one line that says what to do; None for any other error. The error may be the cause of MLflow's."""
    while exc is not None:
        reason = next((text for text in READ_ONLY if text in str(exc)), None)
        if reason:
            import mlflow

            return (f"tracking store {mlflow.get_tracking_uri()} became read-only ({reason}): make it writable, then "
                    "`dmat runs --stale --mark-killed` marks the runs it cut short and says how to resume them")
        exc = exc.__cause__ or exc.__context__
    return None


def _notes(exc: BaseException) -> str:
    """What the library added on the way out (e.g. the run's status and how to resume it)."""
    return "; ".join(getattr(exc, "__notes__", []))


def _with_notes(exc: BaseException) -> str:
    return "; ".join(filter(None, [str(exc), _notes(exc)]))


def _saved_traceback() -> str:
    """Write the current exception's full traceback to a log file; the text that names it."""
    try:
        with tempfile.NamedTemporaryFile("w", prefix=f"dmat-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log",
                                         delete=False) as log:
            log.write(traceback.format_exc())
        return f" (full traceback in {log.name})"
    except OSError:
        return ""


def _fail(message: str, status: int):
    click.echo(message, err=True)
    sys.exit(status)
