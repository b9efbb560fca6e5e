"""Warm start: a new VASP initialised from a trained one (e.g. the champion), items mapped by id.

The catalog moves between nights: items come and go and ``item_idx`` follows popularity, so no
weight is copied by position. :class:`ItemMapping` pairs the new model's items with the source's
by id; :func:`transfer_weights` copies every item-indexed weight (``VASP.item_weights``) for the
items both know, leaves a new item's entries at their fresh initialisation, drops the entries of
items that vanished, and copies every other weight as is but those the model keeps fresh (a pruned
Neural EASE kernel: its closed-form initialisation is tonight's). A source of another architecture
(another preset, other widths or depths) is refused with :class:`ArchitectureMismatch`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class ArchitectureMismatch(ValueError):
    """The source model's weights do not fit the new model (another preset or architecture)."""


@dataclasses.dataclass(frozen=True)
class WarmStartSource:
    """A trained VASP to start from, the item ids of its columns and what it is (for logs and MLflow)."""

    model: Any  # vasp_model.nn.model.VASP
    item_ids: np.ndarray
    uri: str  # models:/NAME/VERSION or a bundle directory
    version: str = "local"  # the registered version, "local" for a directory
    date: str | None = None  # the date it was trained for, when known


@dataclasses.dataclass(frozen=True)
class ItemMapping:
    """For each item of the new model, its column in the source (-1: a new item)."""

    source_columns: np.ndarray  # [I_new] int64
    source_items: int

    @classmethod
    def by_id(cls, source_ids, target_ids) -> ItemMapping:
        position = {str(item): column for column, item in enumerate(source_ids)}
        columns = np.fromiter((position.get(str(item), -1) for item in target_ids), np.int64, len(target_ids))
        return cls(columns, len(source_ids))

    @property
    def kept(self) -> int:
        return int(np.count_nonzero(self.source_columns >= 0))

    @property
    def new(self) -> int:
        return int(self.source_columns.size) - self.kept

    @property
    def dropped(self) -> int:
        return self.source_items - self.kept

    def counts(self) -> dict[str, int]:
        return {"items_kept": self.kept, "items_new": self.new, "items_dropped": self.dropped}


def _relative_path(variable) -> str:
    """A weight's path below its model (``encoder/dense_0/kernel``): the model's own name may differ."""
    return variable.path.split("/", 1)[-1]


def transfer_weights(source, target, mapping: ItemMapping) -> None:
    """Set ``target``'s weights from ``source`` (both built VASPs): item-indexed weights for the items of
    ``mapping`` that both know, every other weight whole but ``target.fresh_weights()``. Raises :class:`ArchitectureMismatch` (nothing
    assigned) when a weight is missing or of another shape."""
    import keras

    sources = {_relative_path(v): v for v in source.weights}
    item_axes = {_relative_path(v): axes for v, axes in target.item_weights()}
    targets = {_relative_path(v): v for v in target.weights}
    if set(sources) != set(targets):
        missing = sorted(set(targets) ^ set(sources))
        raise ArchitectureMismatch(
            f"the warm-start model has other layers than the candidate ({', '.join(missing[:3])} ...): "
            "another architecture; train cold (--warm-start none) or with the source's preset"
        )
    fresh = {_relative_path(v) for v in target.fresh_weights()}
    updates = []
    for path, variable in targets.items():
        if path in fresh:
            continue
        have = tuple(sources[path].shape)
        want = tuple(variable.shape)
        axes = item_axes.get(path, ())
        expected = tuple(mapping.source_items if a in axes else n for a, n in enumerate(want))
        if have != expected:
            raise ArchitectureMismatch(
                f"warm-start weight {path} has shape {have}, the candidate needs {expected}: another preset or "
                "architecture; train cold (--warm-start none) or with the source's preset"
            )
        value = keras.ops.convert_to_numpy(sources[path])
        if axes:
            value = _mapped(value, keras.ops.convert_to_numpy(variable), axes, mapping.source_columns)
        updates.append((variable, value))
    for variable, value in updates:
        variable.assign(value)
        if variable.constraint is not None:  # e.g. Neural EASE's zero diagonal
            variable.assign(variable.constraint(variable))


def _mapped(source: np.ndarray, fresh: np.ndarray, axes: tuple[int, ...], columns: np.ndarray) -> np.ndarray:
    """``fresh`` with the entries of the kept items (along every axis in ``axes``) taken from ``source``."""
    kept = np.flatnonzero(columns >= 0)
    out = fresh.copy()
    target_index = np.ix_(*(kept if a in axes else np.arange(n) for a, n in enumerate(fresh.shape)))
    source_index = np.ix_(*(columns[kept] if a in axes else np.arange(n) for a, n in enumerate(source.shape)))
    out[target_index] = source[source_index]
    return out
