"""What served each date: the record a rerun or a backfill of a past date scores with.

The record of date ``D`` is the ``serving`` of its published lists (``recommendations/dt=D/_manifest.json``,
whose one writer is the scoring job): the kind (vasp | ease | popularity), registered model and
version that scored them. A date is *past* when a later night is recorded: a later date has
published lists, or a version of the registered model tagged with a later date went through the
gate (that night may have moved the champion, even if its scoring never finished). A past date never moves
an alias (:func:`vasp_model.mlops.gate.backfill`), and it is scored with (:func:`pinned`)

* its own record when it has one, so a rerun reproduces its lists;
* else the record of the closest earlier night, what was serving when ``D`` would have run;
* else nothing is pinned: the current champion serves, and the log says so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from vasp_model.data import layout, storage

log = logging.getLogger(__name__)

RECORDS = "recommendations"  # the dataset whose manifests record what served each date


@dataclasses.dataclass(frozen=True)
class Pin:
    """The model a past date is scored with: ``model_uri`` (``models:/NAME/VERSION``; None: popularity of
    the date's features), the record it comes from (``serving``, of date ``source``) and why."""

    model_uri: str | None
    serving: Mapping[str, Any]
    source: str
    reason: str


def recorded(warehouse: str, date: str) -> dict[str, Any] | None:
    """What served ``date``'s published lists (``kind``, ``registered_model``, ``version``), or None."""
    lists = layout.recommendations_dir(warehouse, date)
    if not storage.is_published(lists):
        return None
    serving = storage.read_json(f"{lists}/{storage.MANIFEST}").get("serving")
    return dict(serving) if isinstance(serving, Mapping) else None


def recorded_dates(warehouse: str) -> list[str]:
    """The dates whose lists are published (each one a recorded night), oldest first."""
    return storage.published_dates(warehouse, RECORDS)


def later_night(date: str, dates: Iterable[str]) -> str | None:
    """The latest of ``dates`` after ``date`` (None: ``date`` is not past)."""
    later = [d for d in dates if d > date]
    return max(later) if later else None


def model_uri_of(serving: Mapping[str, Any]) -> str | None:
    """The registry URI that reproduces a record (None: popularity); ValueError when it names no
    registered version (lists scored from a local bundle)."""
    if serving.get("kind") == "popularity":
        return None
    name, version = serving.get("registered_model"), serving.get("version")
    if not name or not str(version or "").isdigit():
        raise ValueError(f"the record names no registered version (kind {serving.get('kind')}, version {version})")
    return f"models:/{name}/{version}"


def describe(serving: Mapping[str, Any]) -> str:
    if serving.get("kind") == "popularity":
        return "popularity"
    return f"{serving.get('kind')} {serving.get('registered_model')} v{serving.get('version')}"


def pinned(warehouse: str, date: str, later: str) -> Pin | None:
    """The model past date ``date`` (``later``: a later recorded night) is scored with (module docstring);
    None when no night at or before ``date`` has a usable record."""
    own = _usable(date, recorded(warehouse, date))
    if own is not None:
        reason = (
            f"{date} ran before (a later night, {later}, is recorded): scoring with what served it, {describe(own)}"
        )
        return Pin(model_uri_of(own), own, date, reason)
    for earlier in sorted((d for d in recorded_dates(warehouse) if d < date), reverse=True):
        record = _usable(earlier, recorded(warehouse, earlier))
        if record is not None:
            reason = (
                f"{date} never ran and a later night ({later}) is recorded: scoring with what served the closest "
                f"earlier night {earlier}, {describe(record)}"
            )
            return Pin(model_uri_of(record), record, earlier, reason)
    return None


def _usable(date: str, serving: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if serving is None:
        return None
    try:
        model_uri_of(serving)
    except ValueError as exc:
        log.warning("the lists of %s cannot be reproduced from the registry: %s", date, exc)
        return None
    return serving
