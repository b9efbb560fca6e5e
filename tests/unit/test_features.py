"""load_features on what the build job writes (a tiny CSV through ``jobs.build_matrices.build``),
checked against the input itself; and Features.from_interactions."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from features_fixture import built_features, copy_features, events_csv

from vasp_model.data import layout, storage
from vasp_model.data.features import (
    EvalSplit,
    Features,
    features_digest,
    input_digest,
    lineage,
    load_features,
    read_manifest,
)

DATE = "2026-01-02"
THRESHOLD = 3.5
CONFIG = {"heldout_users": 4, "ab_copies": 3, "seed": 7}


def _events():
    """(users, items, ratings): 36 users with >= 5 positives, 4 with 4, one with none; every user
    has a private item (so held-out users always have one outside the vocabulary), a rating at the
    threshold (not a positive) and a low duplicate of a liked item (the higher rating wins)."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(41):
        user = f"u{u}"
        if u == 40:
            rows += [(user, "i0", 2.0), (user, "i1", 1.0)]
            continue
        liked = rng.choice(12, size=3 if u < 4 else int(rng.integers(5, 12)), replace=False)
        rows += [(user, f"i{i}", float(rng.choice([4.0, 4.5, 5.0]))) for i in liked]
        rows += [(user, f"p{u}", 5.0), (user, f"i{liked[0]}", 1.0), (user, f"i{(liked[-1] + 1) % 12}", THRESHOLD)]
    return [list(col) for col in zip(*rows, strict=True)]


def _positives(users, items, ratings) -> dict[str, set[str]]:
    """Each user's positives, computed here: an item whose highest rating is above the threshold."""
    best: dict[tuple[str, str], float] = {}
    for user, item, rating in zip(users, items, ratings, strict=True):
        best[(user, item)] = max(best.get((user, item), -np.inf), rating)
    out: dict[str, set[str]] = {user: set() for user in users}
    for (user, item), rating in best.items():
        if rating > THRESHOLD:
            out[user].add(item)
    return out


@pytest.fixture(scope="module")
def build(spark, tmp_path_factory):
    users, items, ratings = _events()
    warehouse, manifest = built_features(spark, tmp_path_factory, events_csv(users, items, ratings), DATE, **CONFIG)
    return warehouse, manifest, _positives(users, items, ratings)


def _row_items(matrix, row: int, item_ids) -> set[str]:
    return {str(item_ids[j]) for j in matrix[row].indices}


def test_load_features_gives_back_the_input(build):
    warehouse, manifest, positives = build
    f = load_features(warehouse, DATE)
    assert f.manifest == {k: v for k, v in manifest.items() if k != "path"}
    eligible = {u for u, items in positives.items() if len(items) >= 5}
    train, validation, test = set(f.train_user_ids), set(f.validation.user_ids), set(f.test.user_ids)
    assert len(validation) == len(test) == 4 and len(train) == len(eligible) - 8
    assert train | validation | test == eligible and not train & validation and not train & test
    for idx, ids in ((f.train_user_idx, f.train_user_ids), (f.test.user_idx, f.test.user_ids)):
        np.testing.assert_array_equal(idx, [int(u[1:]) for u in ids])  # user_idx in numeric id order
        assert np.all(np.diff(idx) > 0)

    # vocabulary: the train users' items, by popularity (train users) desc then id asc
    popularity = {}
    for user in train:
        for item in positives[user]:
            popularity[item] = popularity.get(item, 0) + 1
    assert list(f.item_ids) == sorted(popularity, key=lambda i: (-popularity[i], i))
    np.testing.assert_array_equal(f.popularity, [popularity[i] for i in f.item_ids])

    assert f.train.dtype == np.float32 and f.train.max() == 1
    for row, user in enumerate(f.train_user_ids):
        assert _row_items(f.train, row, f.item_ids) == positives[user]
    assert f.n_copies == CONFIG["ab_copies"]
    halves = set()
    for a, b in f.ab_copies:
        np.testing.assert_array_equal((a + b).toarray(), f.train.toarray())
        assert a.multiply(b).nnz == 0
        np.testing.assert_array_equal(a.getnnz(axis=1), f.train.getnnz(axis=1) // 2)
        halves.add(a.indices.tobytes())
    assert len(halves) == CONFIG["ab_copies"]  # each copy its own shuffle

    # held-out users: their items in the vocabulary, int(0.2 n) held out; the rest dropped and counted
    vocabulary = set(popularity)
    for name, split in (("validation", f.validation), ("test", f.test)):
        dropped = 0
        for row, user in enumerate(split.user_ids):
            fold, hold = _row_items(split.fold_in, row, f.item_ids), _row_items(split.holdout, row, f.item_ids)
            known = positives[user] & vocabulary
            assert fold | hold == known and not fold & hold
            assert len(hold) == int(0.2 * len(known))
            rated = {i for u, i in zip(*_events()[:2], strict=True) if u == user}
            assert _row_items(split.consumed, row, f.item_ids) == rated & vocabulary  # whatever the rating
            dropped += len(positives[user] - vocabulary)
        assert dropped >= split.n_users and manifest["counts"][f"{name}_oov_dropped"] == dropped
    assert manifest["counts"]["users"] == len(positives) and manifest["counts"]["items"] == f.n_items


def test_input_digest_is_the_sha256_of_the_input_the_build_read(build):
    import hashlib

    warehouse, manifest, _ = build
    users, items, ratings = _events()
    expected = hashlib.sha256(events_csv(users, items, ratings).encode()).hexdigest()
    assert input_digest(load_features(warehouse, DATE).manifest) == expected == input_digest(manifest)
    with pytest.raises(ValueError, match="input.sha256"):
        input_digest({"input": {"uri": "x"}})

    # the lineage every output names: one schema, read from the manifest the build wrote
    directory = layout.features_dir(warehouse, DATE)
    written = read_manifest(directory)
    origin = lineage(written, directory)
    assert origin["input_digest"] == expected and origin["input_uri"] == manifest["input"]["uri"]
    assert origin["features_dir"] == os.path.abspath(directory) and origin["schema_version"] == "2"
    assert origin["features_digest"] == features_digest(load_features(warehouse, DATE).manifest)
    assert features_digest({**written, "seconds": -1.0}) != origin["features_digest"]  # another build, another digest


def test_unpublished_date_is_a_clear_error(build, tmp_path):
    warehouse = str(tmp_path / "wh")
    copy_features(build[0], DATE, warehouse)
    unpublished = layout.features_dir(warehouse, "2026-01-01")
    shutil.copytree(layout.features_dir(warehouse, DATE), storage.staging_dir(unpublished))  # a build that died
    with pytest.raises(FileNotFoundError, match=r"not published.*2026-01-02"):
        load_features(warehouse, "2026-01-01")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_features(warehouse, "yesterday")


def test_features_of_another_schema_or_without_input_digest_are_a_clear_error(build, tmp_path):
    warehouse = str(tmp_path / "wh")
    directory = copy_features(build[0], DATE, warehouse)
    manifest = storage.read_json(f"{directory}/{storage.MANIFEST}")
    storage.write_json(f"{directory}/{storage.MANIFEST}", {**manifest, "schema_version": layout.SCHEMA_VERSION - 1})
    with pytest.raises(ValueError, match="schema version .*rebuild the date"):
        load_features(warehouse, DATE)
    storage.write_json(f"{directory}/{storage.MANIFEST}", {**manifest, "input": {"uri": manifest["input"]["uri"]}})
    with pytest.raises(ValueError, match=r"no input digest \(input.sha256\)"):
        load_features(warehouse, DATE)


def _rewrite(warehouse: str, table: str, change) -> None:
    """Replace one published table by ``change(its rows as a pyarrow Table)``."""
    path = layout.feature_table(warehouse, DATE, table)
    rows = pq.read_table(path)
    shutil.rmtree(path)
    storage.resolve(path)[0].create_dir(path, recursive=True)
    pq.write_table(change(rows), f"{path}/part-00000.parquet")


def test_contract_violations_are_reported(build, tmp_path):
    warehouse = str(tmp_path / "wh")
    copy_features(build[0], DATE, warehouse)
    load_features(warehouse, DATE)

    def validation_to_train(users):
        split = [("train" if s == "validation" else s) for s in users.column("split").to_pylist()]
        return users.set_column(users.schema.get_field_index("split"), "split", pa.array(split, pa.string()))

    _rewrite(warehouse, "users", validation_to_train)  # the validation table now holds train users
    with pytest.raises(ValueError, match="validation"):
        load_features(warehouse, DATE)

    shutil.rmtree(layout.features_dir(warehouse, DATE))
    copy_features(build[0], DATE, warehouse)

    def gap(items):
        idx = items.column("item_idx").to_numpy().copy()
        idx[-1] += 1
        return items.set_column(0, "item_idx", pa.array(idx, pa.int32()))

    _rewrite(warehouse, "items", gap)
    with pytest.raises(ValueError, match="contiguous"):
        load_features(warehouse, DATE)


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
