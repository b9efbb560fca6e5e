"""Two scored runs compared user by user: the paired-bootstrap interval of A − B over the users both scored.

A run's per-user table (``models/dt=D/per_user_metrics.parquet``: split, user_id, model, one column per
metric) keeps every scored user's figures, so any two runs that scored the same users can be compared later,
and several pairs (e.g. the splits of a benchmark) pooled into one interval. Users are matched by id; those
only one side scored are counted and left out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from vasp_model.data.layout import PER_USER_METRICS
from vasp_model.evaluation.bootstrap import RESAMPLES, SEED, PairedDifference, paired_bootstrap, pool
from vasp_model.evaluation.metrics import ACCURACY_KEYS

KEYS = ("split", "user_id", "model")  # the table's columns that are not metrics


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A − B per metric over the paired users of every pair, with each side's mean over those users."""

    differences: dict[str, PairedDifference]
    means_a: dict[str, float]
    means_b: dict[str, float]
    paired_users: int
    only_a: int  # users only A scored (left out)
    only_b: int

    def to_dict(self) -> dict:
        return {
            "paired_users": self.paired_users,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "metrics": {
                m: {"a": self.means_a[m], "b": self.means_b[m], **d.to_dict()} for m, d in self.differences.items()
            },
        }


def read_per_user(path: str):
    """The per-user table at ``path`` as a DataFrame: the Parquet file, or a directory holding
    :data:`PER_USER_METRICS`."""
    import pyarrow.parquet as pq

    file = os.path.join(path, PER_USER_METRICS) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {PER_USER_METRICS} at {path} (a models/dt=D directory of `vasp train`)")
    table = pq.read_table(file)
    missing = [c for c in KEYS if c not in table.column_names]
    if missing:
        raise ValueError(f"{file} is not a per-user metrics table: no column {', '.join(missing)}")
    return table.to_pandas()


def metric_names(table) -> list[str]:
    """The metric columns of a per-user table."""
    return [c for c in table.columns if c not in KEYS]


def side(table, model: str, split: str, metrics: Sequence[str], label: str):
    """``model``'s figures on ``split`` in ``table`` (:func:`read_per_user`): a DataFrame of ``metrics``
    indexed by user id (``label`` names the table in errors)."""
    if split not in set(table["split"]):
        raise ValueError(f"{label} has no {split!r} users (has: {', '.join(sorted(set(table['split'])))})")
    rows = table[table["split"] == split]
    if model not in set(rows["model"]):
        raise ValueError(f"{label} has no model {model!r} on {split} (has: {', '.join(sorted(set(rows['model'])))})")
    unknown = [m for m in metrics if m not in rows.columns]
    if unknown:
        raise ValueError(f"{label} has no metric {', '.join(unknown)} (has: {', '.join(metric_names(table))})")
    rows = rows[rows["model"] == model]
    rows = rows.set_index(rows["user_id"].astype(str))[list(metrics)]
    if rows.index.has_duplicates:
        raise ValueError(f"{label} scores a user twice for {model} on {split}: not one run's table")
    return rows


def compare(
    pairs: Sequence[tuple], metrics: Sequence[str] = ACCURACY_KEYS, resamples: int = RESAMPLES, seed: int = SEED
):
    """A − B over the users both sides of each pair scored (each side a :func:`side`), every pair's users
    pooled; a :class:`Comparison`."""
    runs_a, runs_b, only_a, only_b = [], [], 0, 0
    for a, b in pairs:
        users = a.index.intersection(b.index).sort_values()
        only_a, only_b = only_a + len(a.index.difference(b.index)), only_b + len(b.index.difference(a.index))
        runs_a.append({m: a.loc[users, m].to_numpy(dtype=np.float64) for m in metrics})
        runs_b.append({m: b.loc[users, m].to_numpy(dtype=np.float64) for m in metrics})
    left, right = pool(runs_a), pool(runs_b)
    paired = len(left[metrics[0]])
    if not paired:
        raise ValueError("the two sides share no user: nothing to compare")
    keep = ~np.any([np.isnan(left[m]) | np.isnan(right[m]) for m in metrics], axis=0)
    if not keep.any():
        raise ValueError(f"none of the {paired} paired users has every metric on both sides: nothing to compare")
    return Comparison(
        paired_bootstrap(left, right, resamples, seed),
        {m: float(left[m][keep].mean()) for m in metrics},
        {m: float(right[m][keep].mean()) for m in metrics},
        paired,
        only_a,
        only_b,
    )
