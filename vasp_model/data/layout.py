"""The warehouse layout: one place that knows where every table of a date lives.

``{warehouse}/features/dt=D/<table>/`` (Parquet) + ``_manifest.json`` + ``_SUCCESS``
``{warehouse}/models/dt=D/`` (model/ and ease/ bundles, metrics.json, test_topk.parquet, per_user_metrics.parquet)
``{warehouse}/tuning/dt=D/`` (config.json: the config ``vasp tune`` chose; summary.json: its study)
``{warehouse}/recommendations/dt=D/`` (Parquet) + ``_manifest.json`` + ``_SUCCESS``

Each ``dt=D`` points to an immutable version under ``{warehouse}/<dataset>/_versions/dt=D/``
(see :mod:`vasp_model.data.storage`).

The exclusion rule (``exclude``, :data:`vasp_model.core.defaults.EXCLUDE_RULES`) names the feature
table whose (user, item) pairs a user's list leaves out: ``consumed`` (every item the user
interacted with, whatever the rating), ``interactions`` (the positives) or none.
"""

from __future__ import annotations

import datetime as dt
import re

from vasp_model.core.defaults import EXCLUDE_RULES

FEATURE_TABLES = ("items", "users", "interactions", "consumed", "validation", "test", "train_ab", "quarantine")
GIVEN_TABLE = "given"  # built with a given test file (``--test-input``): its positives, the given split's holdout
EXCLUDE_TABLES = dict(zip(EXCLUDE_RULES, ("consumed", "interactions", None), strict=True))
SCHEMA_VERSION = 2  # 2: + the consumed table
DATE_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
EASE_BUNDLE = "ease"  # models/dt=D/ease: the training's closed-form EASE, the fallback when VASP has no champion
PER_USER_METRICS = "per_user_metrics.parquet"  # models/dt=D/: every scored user's metrics, by split and model


def check_date(date: str) -> str:
    """Validate a logical date string ``YYYY-MM-DD`` and return it."""
    try:
        dt.date.fromisoformat(date)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}") from exc
    if len(date) != 10:
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")
    return date


def exclusion_table(exclude: str) -> str | None:
    """The feature table of the items a list leaves out under rule ``exclude`` (None: nothing)."""
    if exclude not in EXCLUDE_TABLES:
        raise ValueError(f"exclude must be one of {', '.join(EXCLUDE_RULES)}, got {exclude!r}")
    return EXCLUDE_TABLES[exclude]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def dataset_dir(warehouse: str, dataset: str, date: str) -> str:
    """``{warehouse}/{dataset}/dt={date}``."""
    return _join(warehouse, dataset, f"dt={check_date(date)}")


def features_dir(warehouse: str, date: str) -> str:
    return dataset_dir(warehouse, "features", date)


def feature_table(warehouse: str, date: str, table: str) -> str:
    if table not in (*FEATURE_TABLES, GIVEN_TABLE):
        raise ValueError(f"unknown feature table {table!r}; expected one of {(*FEATURE_TABLES, GIVEN_TABLE)}")
    return _join(features_dir(warehouse, date), table)


def models_dir(warehouse: str, date: str) -> str:
    return dataset_dir(warehouse, "models", date)


def ease_bundle_dir(warehouse: str, date: str) -> str:
    return _join(models_dir(warehouse, date), EASE_BUNDLE)


def tuning_dir(warehouse: str, date: str) -> str:
    return dataset_dir(warehouse, "tuning", date)


def recommendations_dir(warehouse: str, date: str) -> str:
    return dataset_dir(warehouse, "recommendations", date)
