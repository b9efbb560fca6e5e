"""Features as the product writes them: a tiny events CSV run through the real build job.

Tests never write ``features/dt=D`` tables themselves. :func:`built_features` runs
``jobs.build_matrices.build`` once per test session for each (events, date, build config) and
returns that warehouse; tests share it read-only. A test that changes the tables, or needs
several dates in one warehouse, copies a build first (:func:`copy_features`).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import shutil

from vasp_model.data import layout

_BUILDS: dict[str, tuple[str, dict]] = {}


def events_csv(users, items, ratings=None) -> str:
    """CSV text (header ``user_id,item_id[,rating]``) of the events ``zip(users, items[, ratings])``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if ratings is None:
        writer.writerow(["user_id", "item_id"])
        writer.writerows(zip(users, items, strict=True))
    else:
        writer.writerow(["user_id", "item_id", "rating"])
        writer.writerows(zip(users, items, ratings, strict=True))
    return out.getvalue()


def built_features(spark, tmp_path_factory, text: str, date: str, **config) -> tuple[str, dict]:
    """(warehouse, manifest) holding ``features/dt=date`` built from the CSV ``text`` with
    ``BuildConfig(**config)``: built on the first call, the same warehouse for the rest of the session."""
    from vasp_jobs.build_matrices import BuildConfig, build

    key = hashlib.sha256(json.dumps([text, date, sorted(config.items())]).encode()).hexdigest()
    if key not in _BUILDS:
        root = tmp_path_factory.mktemp("features")
        path = root / "events.csv"
        path.write_text(text)
        warehouse = str(root / "warehouse")
        _BUILDS[key] = (warehouse, build(spark, str(path), warehouse, date, BuildConfig(**config)))
    warehouse, manifest = _BUILDS[key]
    return warehouse, copy.deepcopy(manifest)


def copy_features(warehouse: str, date: str, into: str) -> str:
    """Copy the published ``features/dt=date`` of ``warehouse`` into the warehouse ``into``; its new path."""
    target = layout.features_dir(into, date)
    shutil.copytree(layout.features_dir(warehouse, date), target)
    return target
