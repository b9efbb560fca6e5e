"""load_features on tiny hand-written Parquet tables (the data contract), and Features.from_interactions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from vasp_model.data import layout, storage
from vasp_model.data.features import EvalSplit, Features, load_features

DATE = "2026-01-01"
# vocabulary: item_idx 0 "b" (3 train users), 1 "a" (2), 2 "c" (1)
ITEMS = {"item_idx": [0, 1, 2], "item_id": ["b", "a", "c"], "popularity": [3, 2, 1]}
# user_idx 0..5: 0,2,3 train; 1 validation; 4 test; 5 excluded
USERS = {
    "user_idx": [0, 1, 2, 3, 4, 5],
    "user_id": ["u0", "u1", "u2", "u3", "u4", "u5"],
    "split": ["train", "validation", "train", "train", "test", "excluded"],
}
TRAIN_ITEMS = {0: [0, 1], 2: [0, 2], 3: [0, 1]}


def _write(path: str, columns: dict, schema: pa.Schema, files: int = 1) -> None:
    table = pa.table(columns, schema=schema)
    storage.resolve(path)[0].create_dir(path, recursive=True)
    # several part files + Spark's side files, as a Spark job leaves them
    step = max(1, -(-table.num_rows // files))
    for part, start in enumerate(range(0, max(table.num_rows, 1), step)):
        pq.write_table(table.slice(start, step), f"{path}/part-{part:05d}.parquet")
    open(f"{path}/_SUCCESS", "w").close()
    open(f"{path}/.part-00000.parquet.crc", "w").close()


def write_features(warehouse: str, date: str = DATE, publish: bool = True, **overrides) -> None:
    final = layout.features_dir(warehouse, date)
    staging = storage.staging_dir(final)
    i32, s = pa.int32(), pa.string()
    tables = {
        "items": (ITEMS, pa.schema([("item_idx", i32), ("item_id", s), ("popularity", pa.int64())])),
        "users": (USERS, pa.schema([("user_idx", i32), ("user_id", s), ("split", s)])),
        "interactions": (
            {
                # u1 has an out-of-vocabulary item "z" (null item_idx); u5 (excluded) has one item
                "user_idx": [0, 0, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 5],
                "item_id": ["b", "a", "b", "c", "b", "a", "b", "a", "c", "z", "b", "a", "b", "a", "c", "b", "a", "c"],
                "item_idx": [0, 1, 0, 2, 0, 1, 0, 1, 2, None, 0, 1, 0, 1, 2, 0, 1, 2],
            },
            pa.schema([("user_idx", i32), ("item_id", s), ("item_idx", i32)]),
        ),
        "consumed": (
            {
                # every item a user rated, whatever the rating: the positives and u4's low-rated "y"
                # (outside the vocabulary) and u0's low-rated "c"
                "user_idx": [0, 0, 0, 2, 2, 3, 3, 1, 1, 1, 1, 4, 4, 4, 4, 5],
                "item_id": ["b", "a", "c", "b", "c", "b", "a", "b", "a", "c", "z", "b", "a", "c", "y", "c"],
                "item_idx": [0, 1, 2, 0, 2, 0, 1, 0, 1, 2, None, 0, 1, 2, None, 2],
            },
            pa.schema([("user_idx", i32), ("item_id", s), ("item_idx", i32)]),
        ),
        "validation": (
            {"user_idx": [1, 1, 1], "item_idx": [0, 2, 1], "role": ["fold_in", "fold_in", "holdout"]},
            pa.schema([("user_idx", i32), ("item_idx", i32), ("role", s)]),
        ),
        "test": (
            {"user_idx": [4, 4, 4], "item_idx": [2, 1, 0], "role": ["fold_in", "holdout", "fold_in"]},
            pa.schema([("user_idx", i32), ("item_idx", i32), ("role", s)]),
        ),
        "train_ab": (
            {
                "user_idx": [0, 0, 2, 2, 3, 3, 0, 0, 2, 2, 3, 3],
                "copy": [0] * 6 + [1] * 6,
                "half": ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B", "B", "A"],
                "item_idx": [0, 1, 0, 2, 0, 1, 0, 1, 0, 2, 0, 1],
            },
            pa.schema([("user_idx", i32), ("copy", i32), ("half", s), ("item_idx", i32)]),
        ),
        "quarantine": ({"source": [], "line": [], "raw": [], "reason": []}, None),
    }
    tables["quarantine"] = (
        tables["quarantine"][0],
        pa.schema([("source", s), ("line", pa.int64()), ("raw", s), ("reason", s)]),
    )
    for name, (columns, schema) in tables.items():
        columns = overrides.get(name, columns)
        _write(f"{staging}/{name}", columns, schema, files=2)
    manifest = {"schema_version": 1, "counts": {"users": 6, "items": 3}}
    if publish:
        storage.publish(staging, final, manifest)


def test_load_features_reads_the_contract(tmp_path):
    wh = str(tmp_path / "wh")
    write_features(wh)
    f = load_features(wh, DATE)
    np.testing.assert_array_equal(f.item_ids, ["b", "a", "c"])
    np.testing.assert_array_equal(f.popularity, [3, 2, 1])
    assert f.n_items == 3 and f.manifest["counts"]["users"] == 6

    np.testing.assert_array_equal(f.train_user_idx, [0, 2, 3])
    np.testing.assert_array_equal(f.train_user_ids, ["u0", "u2", "u3"])
    np.testing.assert_array_equal(f.train.toarray(), [[1, 1, 0], [1, 0, 1], [1, 1, 0]])
    assert f.train.dtype == np.float32

    assert f.n_copies == 2
    a0, b0 = f.ab_copies[0]
    np.testing.assert_array_equal(a0.toarray(), [[1, 0, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(b0.toarray(), [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    for a, b in f.ab_copies:
        np.testing.assert_array_equal((a + b).toarray(), f.train.toarray())
        assert a.multiply(b).nnz == 0

    np.testing.assert_array_equal(f.validation.user_ids, ["u1"])
    np.testing.assert_array_equal(f.validation.user_idx, [1])
    np.testing.assert_array_equal(f.validation.fold_in.toarray(), [[1, 0, 1]])
    np.testing.assert_array_equal(f.validation.holdout.toarray(), [[0, 1, 0]])
    np.testing.assert_array_equal(f.test.user_ids, ["u4"])
    np.testing.assert_array_equal(f.test.fold_in.toarray(), [[1, 0, 1]])
    np.testing.assert_array_equal(f.test.holdout.toarray(), [[0, 1, 0]])
    # consumed: the split's users' in-vocabulary items, whatever the rating (u4's "y" is outside)
    np.testing.assert_array_equal(f.validation.consumed.toarray(), [[1, 1, 1]])
    np.testing.assert_array_equal(f.test.consumed.toarray(), [[1, 1, 1]])


def test_unpublished_date_is_a_clear_error(tmp_path):
    wh = str(tmp_path / "wh")
    write_features(wh, "2026-01-02")
    write_features(wh, DATE, publish=False)
    with pytest.raises(FileNotFoundError, match=r"not published.*2026-01-02"):
        load_features(wh, DATE)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_features(wh, "yesterday")


def test_contract_violations_are_reported(tmp_path):
    wh = str(tmp_path / "wh")
    bad_users = dict(USERS, split=["train", "train", "train", "train", "test", "excluded"])
    write_features(wh, users=bad_users)  # validation table now holds a train user
    with pytest.raises(ValueError, match="validation"):
        load_features(wh, DATE)
    write_features(wh, items=dict(ITEMS, item_idx=[0, 1, 3]))
    with pytest.raises(ValueError, match="contiguous"):
        load_features(wh, DATE)


def test_a_split_excludes_by_the_rule():
    """all: the fold-in plus every other item the user interacted with except the held-out ones;
    positives: the fold-in; none: nothing."""
    rows = lambda *r: sp.csr_matrix(np.array(r, dtype=np.float32))  # noqa: E731
    split = EvalSplit(
        fold_in=rows([1, 0, 0, 0], [0, 0, 1, 0]),
        holdout=rows([0, 1, 0, 0], [0, 0, 0, 0]),
        user_idx=np.array([3, 7], np.int32),
        user_ids=np.array(["u3", "u7"], dtype=object),
        consumed=rows([1, 1, 1, 0], [0, 0, 1, 1]),  # u3 rated item 2 low, u7 item 3
    )
    np.testing.assert_array_equal(split.excluded("all").toarray(), [[1, 0, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(split.excluded("positives").toarray(), split.fold_in.toarray())
    assert split.excluded("none").nnz == 0 and split.excluded("none").shape == (2, 4)
    with pytest.raises(ValueError, match="exclude must be one of all, positives, none"):
        split.excluded("seen")


def test_from_interactions_follows_vae_cf_split():
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(60):
        n = 3 if u < 5 else 10  # users 0..4 have too few items and are excluded
        users += [f"u{u}"] * n
        items += [f"i{i}" for i in rng.choice(40, size=n, replace=False)]
    f = Features.from_interactions(users + users[:3], items + items[:3], n_heldout_users=5, n_copies=3, seed=1)
    assert f.validation.n_users == 5 and f.test.n_users == 5 and f.train.shape[0] == 45
    assert len({*f.train_user_ids, *f.validation.user_ids, *f.test.user_ids}) == 55
    assert not {f"u{u}" for u in range(5)} & {*f.train_user_ids, *f.validation.user_ids, *f.test.user_ids}
    # vocabulary = items of train users, popularity desc then id asc; duplicates count once
    counts = np.asarray(f.train.sum(axis=0)).ravel()
    np.testing.assert_array_equal(counts, f.popularity)
    assert np.all(np.diff(f.popularity) <= 0)
    for j in range(1, f.n_items):
        if f.popularity[j] == f.popularity[j - 1]:
            assert f.item_ids[j - 1] < f.item_ids[j]
    assert f.train.max() == 1
    # A/B: disjoint halves covering each train user
    for a, b in f.ab_copies:
        np.testing.assert_array_equal((a + b).toarray(), f.train.toarray())
        assert a.multiply(b).nnz == 0
    # holdout = int(0.2 * n) of each held-out user's in-vocabulary items, disjoint from fold-in
    for split in (f.validation, f.test):
        n = split.fold_in.getnnz(axis=1) + split.holdout.getnnz(axis=1)
        expected = np.where(n >= 5, (0.2 * n).astype(int), 0)
        np.testing.assert_array_equal(split.holdout.getnnz(axis=1), expected)
        assert split.fold_in.multiply(split.holdout).nnz == 0
        assert (split.consumed != split.fold_in + split.holdout).nnz == 0  # only positives were given


def test_from_interactions_is_seeded():
    X = sp.random(40, 30, density=0.3, random_state=0, format="csr")
    f1, f2 = Features.from_matrix(X, seed=7), Features.from_matrix(X, seed=7)
    np.testing.assert_array_equal(f1.test.user_ids, f2.test.user_ids)
    assert (f1.test.holdout != f2.test.holdout).nnz == 0
    f3 = Features.from_matrix(X, seed=8)
    assert not np.array_equal(f1.test.user_ids, f3.test.user_ids)


def test_features_rejects_mismatched_shapes():
    f = Features.from_matrix(sp.random(40, 30, density=0.3, random_state=0, format="csr"))
    import dataclasses

    with pytest.raises(ValueError, match="popularity"):
        dataclasses.replace(f, popularity=f.popularity[:-1])
    with pytest.raises(ValueError, match="train"):
        dataclasses.replace(f, train=f.train[:, :-1])
