"""The published ``features/dt=D/`` tables as sparse matrices in today's vocabulary.

:func:`load_features` reads the Parquet tables with pyarrow only (no Spark) into a
:class:`Features`; :meth:`Features.from_interactions` builds the same object in memory from
(user_id, item_id) pairs with the vae_cf split (used by unit tests and the synthetic demo).

Row order everywhere is ascending ``user_idx`` within a split; the A/B copies share the
rows of ``train``. Column ``j`` of every matrix is item ``item_ids[j]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from vasp_model.data import layout, storage


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """Held-out users of one split (validation or test): the 80% fold-in input and the 20% holdout,
    and every vocabulary item they interacted with, whatever the rating (``consumed``)."""

    fold_in: sp.csr_matrix  # [U_split, I]
    holdout: sp.csr_matrix  # [U_split, I]
    user_idx: np.ndarray  # [U_split] int32, global user_idx
    user_ids: np.ndarray  # [U_split] str (object)
    consumed: sp.csr_matrix  # [U_split, I]

    @property
    def n_users(self) -> int:
        return self.fold_in.shape[0]

    def excluded(self, exclude: str) -> sp.csr_matrix:
        """What these users' lists leave out under rule ``exclude``: the fold-in items (``positives``),
        plus every other item the user interacted with except the held-out ones (``all``), or nothing."""
        table = layout.exclusion_table(exclude)
        if table is None:
            return sp.csr_matrix(self.fold_in.shape, dtype=np.float32)
        if table == "interactions":  # the positives a held-out user's list knows of: the fold-in
            return self.fold_in
        out = (self.fold_in + self.consumed - self.consumed.multiply(self.holdout)).tocsr()
        out.eliminate_zeros()
        out.data[:] = 1.0
        return out


@dataclasses.dataclass(frozen=True)
class Features:
    """Everything training and evaluation read from ``features/dt=D``.

    ``item_ids`` [I] (str, by item_idx), ``popularity`` [I] (train users with the item),
    ``train`` [U_train, I] binary csr, ``train_user_idx`` / ``train_user_ids`` [U_train],
    ``ab_copies`` a list of K ``(A, B)`` csr pairs over the rows of ``train`` (A + B = train),
    ``validation`` / ``test`` :class:`EvalSplit`, ``manifest`` (the published _manifest.json),
    ``temporal`` (built with a temporal holdout, else None): the users seen before the cutoff
    ``D - h`` with a positive after it, fold-in = their positives before it, holdout = their new
    positives in ``(D - h, D]`` that today's vocabulary knows; ``temporal_new_items`` counts
    those the vocabulary does not know (items new to the catalog), ``temporal_next_items`` all of them.
    ``given`` (built with a given test file, else None): every user the file names, fold-in = all of
    the user's positives, holdout = the file's items the vocabulary knows; ``given_test_items`` [U_given]
    counts each user's test items, known or not (the denominator of the given split's recall).
    """

    item_ids: np.ndarray
    popularity: np.ndarray
    train: sp.csr_matrix
    train_user_idx: np.ndarray
    train_user_ids: np.ndarray
    ab_copies: list[tuple[sp.csr_matrix, sp.csr_matrix]]
    validation: EvalSplit
    test: EvalSplit
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    temporal: EvalSplit | None = None
    temporal_new_items: int = 0
    temporal_next_items: int = 0
    given: EvalSplit | None = None
    given_test_items: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def n_copies(self) -> int:
        return len(self.ab_copies)

    def __post_init__(self):
        n_items = self.item_ids.size
        if self.popularity.shape != (n_items,):
            raise ValueError(f"popularity has shape {self.popularity.shape}, expected ({n_items},)")
        mats = {"train": self.train}
        splits = [("validation", self.validation), ("test", self.test)]
        splits += [("temporal", self.temporal)] if self.temporal is not None else []
        splits += [("given", self.given)] if self.given is not None else []
        if self.given is not None and np.shape(self.given_test_items) != (self.given.n_users,):
            raise ValueError("given_test_items must count the test items of each given user")
        for name, split in splits:
            mats[f"{name}.fold_in"] = split.fold_in
            mats[f"{name}.holdout"] = split.holdout
            mats[f"{name}.consumed"] = split.consumed
            if {split.holdout.shape[0], split.consumed.shape[0], split.user_ids.size} != {split.fold_in.shape[0]}:
                raise ValueError(f"{name}: fold_in, holdout, consumed and user_ids must have the same number of users")
        for k, (a, b) in enumerate(self.ab_copies):
            mats[f"ab_copies[{k}].A"], mats[f"ab_copies[{k}].B"] = a, b
        for name, mat in mats.items():
            if mat.shape[1] != n_items:
                raise ValueError(f"{name} has {mat.shape[1]} item columns, the vocabulary has {n_items}")
        for k, (a, b) in enumerate(self.ab_copies):
            if a.shape[0] != self.train.shape[0] or b.shape[0] != self.train.shape[0]:
                raise ValueError(f"ab_copies[{k}] must have one row per train user ({self.train.shape[0]})")

    # ------------------------------------------------------------------ in-memory construction
    @classmethod
    def from_interactions(
        cls,
        user_ids,
        item_ids,
        *,
        n_heldout_users: int | None = None,
        holdout_prop: float = 0.2,
        min_user_interactions: int = 5,
        n_copies: int = 2,
        seed: int = 0,
    ) -> Features:
        """Build features from positive (user_id, item_id) pairs with the vae_cf protocol, in numpy.

        Users with fewer than ``min_user_interactions`` distinct items are dropped; the rest are
        shuffled (seeded) into ``n_heldout_users`` test, ``n_heldout_users`` validation and the
        remaining train users (default: 10% each, at least 1). The vocabulary is the items of
        train users, ordered by popularity desc then item_id asc. Each held-out user's in-vocabulary
        items with at least 5 of them get ``int(holdout_prop * n)`` random items held out (vae_cf);
        the rest are fold-in. A/B copies: each train user's items shuffled and cut in half.
        """
        users = np.asarray(user_ids).astype(str)
        items = np.asarray(item_ids).astype(str)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError("user_ids and item_ids must be 1-D arrays of the same length")
        if not 0 < holdout_prop < 1:
            raise ValueError(f"holdout_prop must be in (0, 1), got {holdout_prop}")
        if n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}")
        rng = np.random.default_rng(seed)
        users, items = _distinct_pairs(users, items)
        uniq_users, u_starts, u_counts = np.unique(users, return_index=True, return_counts=True)
        kept = np.flatnonzero(u_counts >= min_user_interactions)
        n_kept = kept.size
        n_held = max(1, n_kept // 10) if n_heldout_users is None else int(n_heldout_users)
        if n_kept < 2 * n_held + 1:
            raise ValueError(f"{n_kept} users with >= {min_user_interactions} items: too few for {n_held} held-out")
        split_of = _split_users(kept, uniq_users.size, n_held, rng)
        vocab, pop, item_code = _vocabulary(items, np.repeat(split_of, u_counts) == "train")

        def user_rows(split: str) -> tuple[np.ndarray, list[np.ndarray]]:
            members = np.flatnonzero(split_of == split)  # ascending: user index == sorted id order
            rows = []
            for u in members:
                codes = item_code[u_starts[u] : u_starts[u] + u_counts[u]]
                rows.append(np.sort(codes[codes >= 0]))
            return members, rows

        n_items = vocab.size
        train_members, train_rows = user_rows("train")
        train = _rows_to_csr(train_rows, n_items)
        copies = [split_halves(train, rng) for _ in range(n_copies)]

        def eval_split(split: str) -> EvalSplit:
            members, rows = user_rows(split)
            fold, hold = _hold_out(rows, holdout_prop, rng)
            return EvalSplit(
                fold_in=_rows_to_csr(fold, n_items),
                holdout=_rows_to_csr(hold, n_items),
                user_idx=members.astype(np.int32),
                user_ids=uniq_users[members].astype(object),
                consumed=_rows_to_csr(rows, n_items),
            )

        validation, test = eval_split("validation"), eval_split("test")
        return cls(
            item_ids=vocab.astype(object),
            popularity=pop.astype(np.int64),
            train=train,
            train_user_idx=train_members.astype(np.int32),
            train_user_ids=uniq_users[train_members].astype(object),
            ab_copies=copies,
            validation=validation,
            test=test,
            manifest={
                "source": "from_interactions",
                "seed": seed,
                "counts": {"users": int(uniq_users.size), "users_kept": int(n_kept), "items": int(n_items)},
            },
        )

    @classmethod
    def from_matrix(cls, X, **kwargs) -> Features:
        """:meth:`from_interactions` on the non-zeros of a ``[users, items]`` matrix (ids = str(index))."""
        coo = sp.coo_matrix(X)
        mask = coo.data != 0
        return cls.from_interactions(coo.row[mask].astype(str), coo.col[mask].astype(str), **kwargs)


def _distinct_pairs(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, item) pairs, sorted by user then item."""
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    if users.size:
        first = np.ones(users.size, dtype=bool)
        first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[first], items[first]
    return users, items


def _split_users(kept: np.ndarray, n_users: int, n_held: int, rng: np.random.Generator) -> np.ndarray:
    """Each user's split: the ``kept`` users shuffled into test, validation, then train; the rest excluded."""
    perm = kept[rng.permutation(kept.size)]
    split_of = np.full(n_users, "excluded", dtype=object)
    split_of[perm[:n_held]] = "test"
    split_of[perm[n_held : 2 * n_held]] = "validation"
    split_of[perm[2 * n_held :]] = "train"
    return split_of


def _vocabulary(items: np.ndarray, train_pair: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item ids, popularity, each pair's item index or -1): the train pairs' items by popularity desc, id asc."""
    vocab, pop = np.unique(items[train_pair], return_counts=True)
    by_pop = np.lexsort((vocab, -pop))
    rank = np.empty(vocab.size, dtype=np.int64)
    rank[by_pop] = np.arange(vocab.size)
    pos = np.minimum(np.searchsorted(vocab, items), max(vocab.size - 1, 0))
    item_code = np.where((vocab.size > 0) & (vocab[pos] == items), rank[pos] if vocab.size else -1, -1)
    return vocab[by_pop], pop[by_pop], item_code


def split_halves(items: sp.csr_matrix, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One A/B copy: each row's items shuffled and cut into halves ``(A, B)`` (the first ``floor(n/2)`` of a
    row's ``n`` in A, the rest in B), as the build's A/B copies are."""
    lengths = np.diff(items.indptr)
    row = np.repeat(np.arange(items.shape[0]), lengths)
    # a random rank within each row: sort by (row, random key)
    order = np.lexsort((rng.random(row.size), row))
    rank = np.empty(row.size, dtype=np.int64)
    rank[order] = np.arange(row.size) - items.indptr[row[order]]
    in_a = rank < lengths[row] // 2
    cols, data = items.indices, np.ones(row.size, dtype=np.float32)

    def half(mask):
        return sp.csr_matrix((data[mask], (row[mask], cols[mask])), shape=items.shape)

    return half(in_a), half(~in_a)


def _hold_out(rows: list[np.ndarray], holdout_prop: float, rng: np.random.Generator, min_items: int = 5):
    """(fold-in rows, held-out rows): ``int(holdout_prop * n)`` random items of each row with at least
    ``min_items`` items are held out (vae_cf); shorter rows are all fold-in."""
    fold, hold = [], []
    for row in rows:
        mask = np.zeros(len(row), dtype=bool)
        if len(row) >= min_items:
            mask[rng.choice(len(row), size=int(holdout_prop * len(row)), replace=False)] = True
        fold.append(row[~mask])
        hold.append(row[mask])
    return fold, hold


def _rows_to_csr(rows: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int32) if rows else np.empty(0, np.int32)
    return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(rows), n_items))


def _coo_csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_items: int) -> sp.csr_matrix:
    mat = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows.astype(np.int64), cols.astype(np.int64))), shape=(n_rows, n_items)
    )
    mat.sum_duplicates()
    mat.data[:] = 1.0
    mat.sort_indices()
    return mat


def _read_table(warehouse: str, date: str, name: str, columns: list[str]):
    import pyarrow.parquet as pq

    filesystem, path = storage.resolve(layout.feature_table(warehouse, date, name))
    try:
        # pyarrow skips Spark's _SUCCESS / .crc side files (names starting with _ or .).
        return pq.read_table(path, columns=columns, filesystem=filesystem)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"feature table {name!r} missing under {layout.features_dir(warehouse, date)}") from exc


def _np(table, column: str) -> np.ndarray:
    col = table.column(column)
    if col.null_count:
        raise ValueError(f"column {column!r} has {col.null_count} nulls")
    return col.to_numpy()


def _positions(user_idx: np.ndarray, members: np.ndarray, table: str) -> np.ndarray:
    """Row position of each ``user_idx`` within sorted ``members``; error on a stray user."""
    pos = np.searchsorted(members, user_idx)
    if members.size == 0:
        ok = np.zeros(user_idx.shape, dtype=bool)
    else:
        ok = members[np.minimum(pos, members.size - 1)] == user_idx
    if not ok.all():
        raise ValueError(f"table {table!r} holds users {user_idx[~ok][:5].tolist()} that are not in the expected split")
    return pos


def _check_items(item_idx: np.ndarray, n_items: int, table: str) -> None:
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= n_items):
        raise ValueError(f"table {table!r} holds item_idx outside [0, {n_items})")


def input_digest(manifest: Mapping[str, Any]) -> str:
    """The digest of the input a features partition was built from (``input.sha256`` of the build's
    manifest); a clear error for a manifest the build did not write."""
    digest = (manifest.get("input") or {}).get("sha256")
    if not digest:
        raise ValueError(
            "the features manifest names no input digest (input.sha256): rebuild the date with `vasp build`"
        )
    return str(digest)


def features_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the features manifest's canonical JSON. The manifest names the input digest, the build
    parameters, the counts and the build's own timings, so the digest names one published build."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_manifest(directory: str) -> dict[str, Any]:
    """The ``_manifest.json`` of the published features partition ``directory`` (``…/features/dt=D``),
    checked: the schema version this code reads and an input digest (:func:`input_digest`)."""
    manifest = storage.read_json(f"{directory.rstrip('/')}/{storage.MANIFEST}")
    if manifest.get("schema_version") != layout.SCHEMA_VERSION:
        raise ValueError(
            f"features at {directory} have schema version {manifest.get('schema_version')}, this code reads "
            f"{layout.SCHEMA_VERSION}: rebuild the date with `vasp build`"
        )
    input_digest(manifest)
    return manifest


def lineage(manifest: Mapping[str, Any], directory: str) -> dict[str, str]:
    """What every output of a features partition names as its origin: the input (URI, digest) and the
    partition (``directory``, absolute when local, and :func:`features_digest`). The keys are the tags
    of the MLflow run and model version and the ``features_manifest`` of ``models/dt=D``."""
    return {
        "input_uri": str((manifest.get("input") or {}).get("uri", "")),
        "input_digest": input_digest(manifest),
        "features_dir": directory if "://" in directory else os.path.abspath(directory),
        "features_digest": features_digest(manifest),
        "schema_version": str(manifest.get("schema_version")),
    }


def load_items(warehouse: str, date: str) -> tuple[np.ndarray, np.ndarray]:
    """The vocabulary of ``features/dt={date}``: (item ids, popularity), in item_idx order."""
    items = _read_table(warehouse, date, "items", ["item_idx", "item_id", "popularity"])
    item_idx = _np(items, "item_idx").astype(np.int64)
    order = np.argsort(item_idx, kind="stable")
    if not np.array_equal(item_idx[order], np.arange(item_idx.size)):
        raise ValueError("items.item_idx must be contiguous 0..I-1 without duplicates")
    return _np(items, "item_id").astype(object)[order], _np(items, "popularity").astype(np.int64)[order]


def require_features(warehouse: str, date: str) -> str:
    """The published ``features/dt=date``; ``FileNotFoundError`` naming the published dates when it is not."""
    directory = layout.features_dir(warehouse, date)
    if not storage.is_published(directory):
        available = storage.published_dates(warehouse, "features")
        raise FileNotFoundError(
            f"features for {date} are not published at {directory} (no {storage.SUCCESS}); "
            f"published dates: {', '.join(available) or 'none'}"
        )
    return directory


def load_features(warehouse: str, date: str) -> Features:
    """Read the published ``{warehouse}/features/dt={date}`` into :class:`Features`.

    Raises FileNotFoundError if that date is not published (no ``_SUCCESS``), ValueError if the
    tables break the data contract (non-contiguous indices, users in the wrong split, ...).
    """
    directory = require_features(warehouse, date)
    manifest = read_manifest(directory)

    item_ids, popularity = load_items(warehouse, date)
    n_items = item_ids.size

    users = _read_table(warehouse, date, "users", ["user_idx", "user_id", "split"])
    u_idx = _np(users, "user_idx").astype(np.int64)
    u_ids = _np(users, "user_id").astype(object)
    u_split = _np(users, "split").astype(str)
    by_idx = np.argsort(u_idx, kind="stable")
    u_idx, u_ids, u_split = u_idx[by_idx], u_ids[by_idx], u_split[by_idx]

    train_members = u_idx[u_split == "train"]
    cutoff = (manifest.get("temporal") or {}).get("cutoff")
    inter = _read_table(warehouse, date, "interactions", ["user_idx", "item_idx", *(["timestamp"] if cutoff else [])])
    i_user = inter.column("user_idx").to_numpy(zero_copy_only=False)
    i_item = inter.column("item_idx").to_numpy(zero_copy_only=False)  # float with NaN where null
    # With a temporal holdout the model learns only what happened before the cutoff.
    i_before = _before(inter, cutoff)
    in_train = np.isin(i_user, train_members) & ~np.isnan(np.asarray(i_item, dtype=np.float64)) & i_before
    t_user, t_item = i_user[in_train].astype(np.int64), np.asarray(i_item[in_train]).astype(np.int64)
    _check_items(t_item, n_items, "interactions")
    train = _coo_csr(_positions(t_user, train_members, "interactions"), t_item, train_members.size, n_items)

    ab = _read_table(warehouse, date, "train_ab", ["user_idx", "copy", "half", "item_idx"])
    ab_user = _np(ab, "user_idx").astype(np.int64)
    ab_copy = _np(ab, "copy").astype(np.int64)
    ab_half = _np(ab, "half").astype(str)
    ab_item = _np(ab, "item_idx").astype(np.int64)
    _check_items(ab_item, n_items, "train_ab")
    ab_pos = _positions(ab_user, train_members, "train_ab")
    copies = []
    for k in np.unique(ab_copy):
        pair = []
        for half in ("A", "B"):
            sel = (ab_copy == k) & (ab_half == half)
            pair.append(_coo_csr(ab_pos[sel], ab_item[sel], train_members.size, n_items))
        copies.append(tuple(pair))

    consumed = _read_table(warehouse, date, "consumed", ["user_idx", "item_idx", *(["timestamp"] if cutoff else [])])
    c_item = np.asarray(consumed.column("item_idx").to_numpy(zero_copy_only=False), dtype=np.float64)  # NaN: null
    known = ~np.isnan(c_item) & _before(consumed, cutoff)
    c_user = consumed.column("user_idx").to_numpy(zero_copy_only=False)[known].astype(np.int64)
    c_item = c_item[known].astype(np.int64)
    _check_items(c_item, n_items, "consumed")

    def eval_split(name: str) -> EvalSplit:
        table = _read_table(warehouse, date, name, ["user_idx", "item_idx", "role"])
        e_user = _np(table, "user_idx").astype(np.int64)
        e_item = _np(table, "item_idx").astype(np.int64)
        e_role = _np(table, "role").astype(str)
        _check_items(e_item, n_items, name)
        split_members = u_idx[u_split == name]
        members = np.unique(e_user)
        _positions(members, split_members, name)  # every user in the table belongs to this split
        pos = np.searchsorted(members, e_user)
        roles = set(np.unique(e_role).tolist()) - {"fold_in", "holdout"}
        if roles:
            raise ValueError(f"table {name!r} has unknown role values {sorted(roles)}")
        fold = e_role == "fold_in"
        hold = ~fold
        mine = np.isin(c_user, members)
        return EvalSplit(
            fold_in=_coo_csr(pos[fold], e_item[fold], members.size, n_items),
            holdout=_coo_csr(pos[hold], e_item[hold], members.size, n_items),
            user_idx=members.astype(np.int32),
            user_ids=u_ids[np.searchsorted(u_idx, members)],
            consumed=_coo_csr(np.searchsorted(members, c_user[mine]), c_item[mine], members.size, n_items),
        )

    temporal: dict[str, Any] = {}
    if cutoff:
        i_item_f = np.asarray(i_item, dtype=np.float64)
        temporal = _temporal_split(i_user.astype(np.int64), i_item_f, i_before, n_items, u_idx, u_ids)
        c_users = np.isin(c_user, temporal["split"].user_idx)
        c_pos = np.searchsorted(temporal["split"].user_idx, c_user[c_users])
        consumed_t = _coo_csr(c_pos, c_item[c_users], temporal["split"].n_users, n_items)
        temporal["split"] = dataclasses.replace(temporal["split"], consumed=consumed_t)
    given: dict[str, Any] = {}
    if manifest.get("given"):
        known = ~np.isnan(np.asarray(i_item, dtype=np.float64))
        fold = (i_user[known].astype(np.int64), np.asarray(i_item[known]).astype(np.int64))
        given = _given_split(_read_table(warehouse, date, layout.GIVEN_TABLE, ["user_idx", "item_idx"]), fold, n_items)
        mine = np.isin(c_user, given["split"].user_idx)
        c_pos = np.searchsorted(given["split"].user_idx, c_user[mine])
        given["split"] = dataclasses.replace(
            given["split"],
            user_ids=u_ids[np.searchsorted(u_idx, given["split"].user_idx)],
            consumed=_coo_csr(c_pos, c_item[mine], given["split"].n_users, n_items),
        )
    return Features(
        item_ids=item_ids,
        popularity=popularity,
        train=train,
        train_user_idx=train_members.astype(np.int32),
        train_user_ids=u_ids[u_split == "train"],
        ab_copies=copies,
        validation=eval_split("validation"),
        test=eval_split("test"),
        manifest=manifest,
        temporal=temporal.get("split"),
        temporal_new_items=int(temporal.get("new_items", 0)),
        temporal_next_items=int(temporal.get("next_items", 0)),
        given=given.get("split"),
        given_test_items=given.get("test_items"),
    )


def _before(table, cutoff: int | None) -> np.ndarray:
    """Rows of ``table`` whose ``timestamp`` is before ``cutoff`` (all rows without a cutoff)."""
    if not cutoff:
        return np.ones(table.num_rows, dtype=bool)
    ts = np.asarray(table.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.float64)
    return ts < cutoff  # a null time (NaN) is never before it


def _given_split(table, positives: tuple[np.ndarray, np.ndarray], n_items: int) -> dict[str, Any]:
    """The given split from the ``given`` table (user_idx, item_idx or null) and every known positive
    (user_idx, item_idx): fold-in = the users' positives, holdout = their test items in the vocabulary,
    ``test_items`` = each user's test items, known or not (user ids and consumed items filled by the caller)."""
    g_user = _np(table, "user_idx").astype(np.int64)
    g_item = np.asarray(table.column("item_idx").to_numpy(zero_copy_only=False), dtype=np.float64)
    known = ~np.isnan(g_item)
    _check_items(g_item[known].astype(np.int64), n_items, layout.GIVEN_TABLE)
    members = np.unique(g_user)
    p_user, p_item = positives
    mine = np.isin(p_user, members)
    split = EvalSplit(
        fold_in=_coo_csr(np.searchsorted(members, p_user[mine]), p_item[mine], members.size, n_items),
        holdout=_coo_csr(
            np.searchsorted(members, g_user[known]), g_item[known].astype(np.int64), members.size, n_items
        ),
        user_idx=members.astype(np.int32),
        user_ids=np.empty(members.size, dtype=object),
        consumed=sp.csr_matrix((members.size, n_items), dtype=np.float32),
    )
    test_items = np.bincount(np.searchsorted(members, g_user), minlength=members.size)
    return {"split": split, "test_items": test_items}


def _temporal_split(i_user, i_item, before, n_items: int, u_idx, u_ids) -> dict[str, Any]:
    """The next-period holdout from the positives (user, item or NaN, first seen before the cutoff?):
    users with a known positive before the cutoff and one after it."""
    known = ~np.isnan(i_item)
    history = before & known
    seen = np.unique(i_user[history])
    nxt = ~before & np.isin(i_user, seen)
    members = np.unique(i_user[nxt & known])
    fold = history & np.isin(i_user, members)
    hold = nxt & known
    split = EvalSplit(
        fold_in=_coo_csr(np.searchsorted(members, i_user[fold]), i_item[fold].astype(np.int64), members.size, n_items),
        holdout=_coo_csr(np.searchsorted(members, i_user[hold]), i_item[hold].astype(np.int64), members.size, n_items),
        user_idx=members.astype(np.int32),
        user_ids=u_ids[np.searchsorted(u_idx, members)],
        consumed=sp.csr_matrix((members.size, n_items), dtype=np.float32),
    )
    return {"split": split, "new_items": int((nxt & ~known).sum()), "next_items": int(nxt.sum())}
