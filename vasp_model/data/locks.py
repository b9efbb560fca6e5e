"""One run at a time per stage and date: ``{warehouse}/_locks/<stage>-dt=D.lock``.

Two runs of one stage and date (the DAG's task and a ``vasp`` command, or two commands) would
write versions of the same date at once, and each publish removes the versions it supersedes,
the other run's included. So every stage holds its date's lock while it runs. The lock is an
exclusive ``flock(2)`` on the lock file, which also records the holder (pid, host, since) for
the message a refused run prints. The kernel drops the lock when its holder exits, however it
ends (SIGKILL, OOM): a lock file left behind by a dead run is stale by construction and the
next run takes it at once.

A second run refuses at once with one line naming the holder (:class:`DateLocked`), or waits up
to ``VASP_LOCK_WAIT`` seconds (default 0) for the holder to finish first. The lock lives in the
warehouse when that is a local or mounted (POSIX, NFS) directory, so runs on every machine that
mounts it exclude each other; with an object-store warehouse (``s3://``, ``gs://``, ``hdfs://``)
it lives under the run directory (``$VASP_HOME/locks``) and excludes runs of that machine only:
across machines the scheduler is the lock (one DAG run per date, ``max_active_runs``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from vasp_model.core import defaults
from vasp_model.core.errors import DateLocked, OutOfSpace
from vasp_model.data.layout import check_date

log = logging.getLogger(__name__)

LOCKS = "_locks"
_POLL_S = 0.2

F = TypeVar("F", bound=Callable[..., Any])


def lock_path(warehouse: str, stage: str, date: str) -> str:
    """Where the lock of ``stage`` for ``date`` lives (module docstring)."""
    from vasp_model.data import storage  # pyarrow: not at import (the DAG file imports stages decorated here)

    name = f"{stage}-dt={check_date(date)}.lock"
    if storage.is_local(warehouse):
        return os.path.join(os.path.abspath(warehouse.removeprefix("file://")), LOCKS, name)
    key = hashlib.sha1(warehouse.rstrip("/").encode()).hexdigest()[:12]  # one folder per remote warehouse
    return os.path.join(defaults.run_dir(), "locks", key, name)


def wait_seconds() -> float:
    """How long a run waits for the lock (``VASP_LOCK_WAIT``, seconds; 0: refuse at once)."""
    text = os.environ.get("VASP_LOCK_WAIT", "0")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"VASP_LOCK_WAIT must be a number of seconds >= 0, got {text!r}")
    return seconds


@contextlib.contextmanager
def date_lock(warehouse: str, stage: str, date: str, wait: float | None = None) -> Iterator[str]:
    """Hold the lock of ``stage`` for ``date`` in ``warehouse`` for the body; yields the lock file's path.

    Raises :class:`DateLocked` naming the holder when another live run holds it longer than ``wait``
    seconds (default :func:`wait_seconds`).
    """
    path = lock_path(warehouse, stage, date)
    wait = wait_seconds() if wait is None else wait
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"no space left on device while taking the lock {path}") from exc
        raise
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DateLocked(_refusal(stage, date, path, wait)) from None
                time.sleep(_POLL_S)
        _record(fd, stage, date)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: the file stays (removing it would race the next run's open)
    finally:
        os.close(fd)  # closing drops the flock


def locked(stage: str) -> Callable[[F], F]:
    """Decorate a stage function of one config (with ``warehouse`` and ``date``) to run under its date's lock."""

    def decorate(run: F) -> F:
        @functools.wraps(run)
        def wrapper(config: Any, *args: Any, **kwargs: Any) -> Any:
            with date_lock(config.warehouse, stage, config.date):
                return run(config, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def holder(path: str) -> dict[str, Any]:
    """What the lock file at ``path`` says about its holder ({} when free or unreadable)."""
    try:
        with open(path, encoding="utf-8") as src:
            return json.loads(src.read() or "{}")
    except (OSError, ValueError):
        return {}


def _record(fd: int, stage: str, date: str) -> None:
    """Write who holds the lock into its file; best effort (on a full disk the lock holds all the same)."""
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    who = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage, "date": date, "since": since}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who).encode(), 0)
    except OSError as exc:
        log.debug("could not record the holder of the lock: %s", exc)


def _refusal(stage: str, date: str, path: str, wait: float) -> str:
    info = holder(path)
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
    waited = f"after waiting {wait:g} s " if wait else ""
    return (
        f"{stage} of {date} is already running ({who}; lock {path}): {waited}refusing to run it twice at once; "
        "wait for that run to finish, or set VASP_LOCK_WAIT=SECONDS to wait for it"
    )
