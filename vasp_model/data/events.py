"""Append-only event logs: which partitions the build of a logical date reads, and its time window.

An event log is a directory of files, or of date partitions ``DIR/dt=YYYY-MM-DD/…`` (CSV or
Parquet, with a timestamp column). The build of date ``D`` reads the partitions up to ``D``
(never a later one, so a backfill sees what was there on ``D``) and keeps the events with time
before the end of ``D`` (UTC) and, with ``history_days``, at or after the start of the window.
An input URI names a log with the prefix ``events:`` (``events:/data/events``), so that one
string (a DAG Param, ``VASP_INPUT``) says both where and what.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pyarrow import fs as pafs

from vasp_model.data import layout, storage

EVENTS_PREFIX = "events:"
DAY_S = 86_400


def split_input(uri: str) -> tuple[str, bool]:
    """``(location, is_event_log)`` of an input URI (``events:LOCATION`` names an event log)."""
    if uri.startswith(EVENTS_PREFIX):
        return uri[len(EVENTS_PREFIX) :], True
    return uri, False


def partition_dir(log_uri: str, date: str) -> str:
    """``{log}/dt={date}``: the partition the sensor of ``date`` waits for."""
    return f"{log_uri.rstrip('/')}/dt={layout.check_date(date)}"


@dataclasses.dataclass(frozen=True)
class Window:
    """The history a build of ``date`` sees: events in ``[start, end)`` (epoch seconds, UTC)."""

    date: str
    history_days: int | None = None  # None: the whole log up to the end of ``date``

    def __post_init__(self) -> None:
        layout.check_date(self.date)
        if self.history_days is not None and self.history_days < 1:
            raise ValueError(f"history_days must be >= 1 or unset, got {self.history_days}")

    @property
    def end(self) -> int:
        """Epoch seconds of the end of ``date`` (midnight UTC after it): events must be before it."""
        day = dt.datetime.combine(dt.date.fromisoformat(self.date), dt.time(), tzinfo=dt.UTC)
        return int(day.timestamp()) + DAY_S

    @property
    def start(self) -> int | None:
        return None if self.history_days is None else self.end - self.history_days * DAY_S

    @property
    def first_date(self) -> str | None:
        """The first partition inside the window (None: the log's first partition)."""
        if self.history_days is None:
            return None
        return (dt.date.fromisoformat(self.date) - dt.timedelta(days=self.history_days - 1)).isoformat()

    def describe(self) -> dict[str, object]:
        def iso(seconds: int | None) -> str | None:
            return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()

        return {"history_days": self.history_days, "start": iso(self.start), "end": iso(self.end)}


def log_partitions(log_uri: str) -> dict[str, str]:
    """``{date: partition URI}`` of the ``dt=YYYY-MM-DD`` directories directly under ``log_uri``."""
    filesystem, path = storage.resolve(log_uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"event log not found: {log_uri}")
    if info.type != pafs.FileType.Directory:
        return {}
    out = {}
    for entry in filesystem.get_file_info(pafs.FileSelector(path, recursive=False)):
        match = layout.DATE_RE.match(entry.base_name)
        if match and entry.type == pafs.FileType.Directory:
            out[match.group(1)] = partition_dir(log_uri, match.group(1))
    return dict(sorted(out.items()))


def window_partitions(log_uri: str, window: Window) -> dict[str, str]:
    """The partitions a build reads: every date from the window's first (or the log's first) to
    ``window.date``. A date without its partition inside that range is a ``ValueError`` naming it
    (never a silently shorter window); an unpartitioned log is ``{}`` (read whole, filtered by time)."""
    partitions = log_partitions(log_uri)
    if not partitions:
        return {}
    first = window.first_date or min(partitions)
    if first > window.date:
        raise ValueError(f"event log {log_uri} has no partition at or before {window.date} (first: {first})")
    day, last = dt.date.fromisoformat(first), dt.date.fromisoformat(window.date)
    wanted = [(day + dt.timedelta(days=k)).isoformat() for k in range((last - day).days + 1)]
    missing = [d for d in wanted if d not in partitions]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"event log {log_uri} is missing partition dt={missing[0]}{more} inside the window "
            f"{wanted[0]}..{window.date}"
        )
    return {d: partitions[d] for d in wanted}
