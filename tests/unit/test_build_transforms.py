"""Unit tests of the build job's pure transforms, each on a tiny DataFrame built in the test."""

from __future__ import annotations

import argparse
import os

import pytest

from vasp_jobs import build_matrices as bm
from vasp_jobs.common import spark as js

EVENT_SCHEMA = (
    "user_id string, item_id string, rating double, reason string, raw string, source string, block long, row long"
)


def _events(spark, rows):
    """rows: (user, item, rating) or (None, None, None, reason) for a rejected row."""
    out = []
    for i, r in enumerate(rows):
        if len(r) == 4:
            out.append((None, None, None, r[3], f"bad line {i}", "f.csv", 0, i))
        else:
            out.append((r[0], r[1], r[2], None, None, "f.csv", 0, i))
    return spark.createDataFrame(out, EVENT_SCHEMA)


def _by_user(per_user):
    return {r["user_id"]: r for r in per_user.filter("not is_bad").collect()}


# ---------------------------------------------------------------------------- collapse_events


def test_collapse_counts_duplicates_binarizes_and_keeps_rejected_rows(spark):
    events = _events(
        spark,
        [
            ("u1", "a", 5.0),
            ("u1", "a", 2.0),  # duplicate: the higher rating (5) wins -> positive, counted once
            ("u1", "b", 3.5),  # exactly the threshold: not a positive
            ("u1", "c", 4.0),
            ("u2", "a", 1.0),  # a user with no positive is still a user
            ("u2", "b", 2.0),
            ("u2", "b", 2.0),
            (None, None, None, "null_user"),
            (None, None, None, "wrong_column_count"),
        ],
    )
    per_user = bm.collapse_events(events, threshold=3.5)
    users = _by_user(per_user)
    assert set(users) == {"u1", "u2"}
    assert (users["u1"]["n_rows"], users["u1"]["n_distinct"], users["u1"]["n_pos"]) == (4, 3, 2)
    assert sorted(users["u1"]["pos"]) == ["a", "c"]
    assert (users["u2"]["n_rows"], users["u2"]["n_distinct"], users["u2"]["n_pos"]) == (3, 2, 0)
    # every distinct item whatever the rating (what a list leaves out under exclude=all)
    assert sorted(users["u1"]["items"]) == ["a", "b", "c"] and sorted(users["u2"]["items"]) == ["a", "b"]
    bad = per_user.filter("is_bad").select("bad.reason", "bad.row").collect()
    assert sorted((r["reason"], r["row"]) for r in bad) == [("null_user", 7), ("wrong_column_count", 8)]


def test_collapse_null_rating_means_positive_and_null_item_makes_a_user_without_events(spark):
    events = _events(spark, [("u1", "a", None), ("u1", "a", None), ("u1", "b", None), ("u3", None, None)])
    users = _by_user(bm.collapse_events(events, threshold=3.5))
    assert sorted(users["u1"]["pos"]) == ["a", "b"]
    assert (users["u1"]["n_rows"], users["u1"]["n_distinct"]) == (3, 2)
    assert (users["u3"]["n_rows"], users["u3"]["n_distinct"], users["u3"]["n_pos"]) == (0, 0, 0)


def test_collapse_threshold_is_strict_and_configurable(spark):
    events = _events(spark, [("u", "a", 3.0), ("u", "b", 4.0), ("u", "c", 4.5)])
    assert sorted(_by_user(bm.collapse_events(events, 3.5))["u"]["pos"]) == ["b", "c"]
    assert sorted(_by_user(bm.collapse_events(events, 4.0))["u"]["pos"]) == ["c"]
    assert sorted(_by_user(bm.collapse_events(events, 0.0))["u"]["pos"]) == ["a", "b", "c"]


# ---------------------------------------------------------------------------- assign_users


def _users(spark, n_pos_by_user):
    return spark.createDataFrame(list(n_pos_by_user.items()), "user_id string, n_pos int")


def test_assign_users_splits_disjoint_sized_and_contiguous(spark):
    n_pos = {str(u): (u % 9) for u in range(1, 41)}  # ids "1".."40"; some have < 5 positives
    out = bm.assign_users(_users(spark, n_pos), n_heldout=3, min_positives=5, seed=7).toPandas()
    assert sorted(out["user_idx"]) == list(range(40))
    # user_idx follows numeric order for numeric ids: "2" before "10"
    assert list(out.sort_values("user_idx")["user_id"]) == [str(u) for u in range(1, 41)]
    counts = out["split"].value_counts().to_dict()
    eligible = sum(v >= 5 for v in n_pos.values())
    assert counts["test"] == 3 and counts["validation"] == 3
    assert counts["train"] == eligible - 6
    assert counts["excluded"] == 40 - eligible
    assert set(out[out["split"] == "excluded"]["user_id"]) == {u for u, v in n_pos.items() if v < 5}


def test_assign_users_is_seeded(spark):
    n_pos = {f"user{u}": 10 for u in range(60)}
    frame = _users(spark, n_pos)

    def held(seed):
        out = bm.assign_users(frame, 5, 5, seed).toPandas()
        return set(out[out["split"] == "test"]["user_id"])

    assert held(1) == held(1)
    assert held(1) != held(2)


# ---------------------------------------------------------------------------- vocabulary, interactions


def _pos_rows(spark, rows):
    return spark.createDataFrame(rows, "user_idx int, user_id string, split string, item_id string")


def test_build_items_uses_train_users_ordered_by_popularity_then_id(spark):
    rows = [
        (0, "u0", "train", "b"),
        (0, "u0", "train", "a"),
        (1, "u1", "train", "b"),
        (1, "u1", "train", "c"),
        (2, "u2", "test", "z"),  # test-only item: not in the vocabulary
        (2, "u2", "test", "a"),
    ]
    items = bm.build_items(_pos_rows(spark, rows)).orderBy("item_idx").collect()
    assert [(r["item_idx"], r["item_id"], r["popularity"]) for r in items] == [(0, "b", 2), (1, "a", 1), (2, "c", 1)]
    interactions = bm.build_interactions(
        bm.with_item_idx(_pos_rows(spark, rows), bm.build_items(_pos_rows(spark, rows)))
    )
    got = {(r["user_idx"], r["item_id"]): r["item_idx"] for r in interactions.collect()}
    assert got[(2, "z")] is None and got[(2, "a")] == 1 and len(got) == 6


# ---------------------------------------------------------------------------- held-out users


def test_heldout_table_follows_vae_cf_proportions_and_drops_unknown_items(spark):
    rows = [(0, "u0", "test", f"i{k}", k) for k in range(10)]  # 10 items -> int(0.2*10) = 2 held out
    rows += [(1, "u1", "test", f"i{k}", k) for k in range(4)]  # 4 items (< 5) -> all fold-in
    rows += [(2, "u2", "test", f"i{k}", k) for k in range(7)] + [(2, "u2", "test", "new", None)]  # 7 known -> 1
    rows += [(3, "u3", "validation", "i0", 0)]  # another split: ignored
    frame = spark.createDataFrame(rows, "user_idx int, user_id string, split string, item_id string, item_idx int")
    config = bm.BuildConfig()
    out = bm.heldout_table(frame, "test", config).toPandas()
    roles = out.groupby(["user_idx", "role"]).size().to_dict()
    assert roles == {(0, "fold_in"): 8, (0, "holdout"): 2, (1, "fold_in"): 4, (2, "fold_in"): 6, (2, "holdout"): 1}
    assert out["item_idx"].notna().all() and 3 not in set(out["user_idx"])
    again = bm.heldout_table(frame, "test", config).toPandas()
    key = ["user_idx", "item_idx", "role"]
    assert again.sort_values(key).values.tolist() == out.sort_values(key).values.tolist()
    other = bm.heldout_table(frame, "test", bm.BuildConfig(seed=1)).toPandas()
    assert set(other[other.role == "holdout"]["item_idx"]) != set(out[out.role == "holdout"]["item_idx"])


@pytest.mark.parametrize("min_items", [5, 7])
def test_heldout_table_boundary_at_holdout_min_items(spark, min_items):
    """Users with min-1, min and min+1 items (and more): int(0.2 n) held out from n = min on, none below;
    with min 7 the user below it has 6 items, where int(0.2 * 6) = 1 would be held out without the rule."""
    sizes = {u: n for u, n in enumerate([min_items - 1, min_items, min_items + 1, 10, 14, 15, 23])}
    rows = [(u, f"u{u}", "test", f"i{k}", k) for u, n in sizes.items() for k in range(n)]
    frame = spark.createDataFrame(rows, "user_idx int, user_id string, split string, item_id string, item_idx int")
    out = bm.heldout_table(frame, "test", bm.BuildConfig(holdout_min_items=min_items)).toPandas()
    assert len(out) == len(rows)
    for user, n in sizes.items():
        mine = out[out.user_idx == user]
        held, fold = set(mine[mine.role == "holdout"].item_idx), set(mine[mine.role == "fold_in"].item_idx)
        assert len(held) == (int(0.2 * n) if n >= min_items else 0), (n, min_items)
        assert held | fold == set(range(n)) and not held & fold and len(mine) == n


# ---------------------------------------------------------------------------- A/B copies


def test_ab_table_halves_are_balanced_disjoint_and_cover_every_item(spark):
    sizes = {0: 5, 1: 6, 2: 11, 3: 40}
    rows = [(u, f"u{u}", "train", f"i{k}", k) for u, n in sizes.items() for k in range(n)]
    rows += [(9, "u9", "test", "i0", 0)]  # not a train user: no copies
    frame = spark.createDataFrame(rows, "user_idx int, user_id string, split string, item_id string, item_idx int")
    out = bm.ab_table(frame, bm.BuildConfig(ab_copies=4)).toPandas()
    assert set(out["user_idx"]) == set(sizes) and set(out["copy"]) == {0, 1, 2, 3}
    for (user, _copy), group in out.groupby(["user_idx", "copy"]):
        a = set(group[group.half == "A"]["item_idx"])
        b = set(group[group.half == "B"]["item_idx"])
        assert not a & b
        assert a | b == set(range(sizes[user]))
        assert len(group) == sizes[user]
        assert abs(len(a) - len(b)) <= 1
    halves = {c: frozenset(g[g.half == "A"]["item_idx"]) for c, g in out[out.user_idx == 3].groupby("copy")}
    assert len(set(halves.values())) == 4  # every copy is its own shuffle


# ---------------------------------------------------------------------------- config and CLI plumbing


def test_build_config_validation_and_heldout_count():
    assert bm.BuildConfig().heldout_count(6034) == 603
    assert bm.BuildConfig().heldout_count(200_000) == 10_000
    assert bm.BuildConfig(heldout_users=2).heldout_count(10) == 2
    with pytest.raises(ValueError, match="no training user"):
        bm.BuildConfig(heldout_users=5).heldout_count(10)
    for bad in ({"min_user_interactions": 0}, {"ab_copies": 0}, {"holdout_fraction": 1.0}, {"format": "xls"}):
        with pytest.raises(ValueError):
            bm.BuildConfig(**bad)


def test_build_config_env_and_flags(monkeypatch):
    parser = argparse.ArgumentParser()
    bm.add_arguments(parser)
    monkeypatch.setenv("VASP_AB_COPIES", "3")
    monkeypatch.setenv("VASP_THRESHOLD", "4.0")
    config = bm.config_from_args(parser.parse_args(["--threshold", "2.5"])).build
    assert config.ab_copies == 3 and config.threshold == 2.5
    for action in parser._actions:
        assert action.help, action.dest


def test_spark_config_env_overrides_and_validation(monkeypatch):
    monkeypatch.setenv("VASP_SPARK_MASTER", "spark://10.0.0.1:7077")
    parser = argparse.ArgumentParser()
    js.add_spark_arguments(parser)
    args = parser.parse_args(["--shuffle-partitions", "16", "--spark-conf", "spark.x=1"])
    config = js.spark_config_from_args(args, "job")
    assert config.spark_master == "spark://10.0.0.1:7077" and not config.is_local
    settings = config.settings()
    assert settings["spark.sql.shuffle.partitions"] == "16" and settings["spark.x"] == "1"
    assert js.spark_config({"spark_master": "local[2]"}, env={}).settings()["spark.sql.shuffle.partitions"] == "8"
    assert js.spark_config({"spark_master": "yarn"}, env={}).settings()["spark.sql.shuffle.partitions"] == "200"
    for bad in ({"spark_master": "http://x"}, {"spark_conf": ("novalue",)}, {"spark_shuffle_partitions": -1}):
        with pytest.raises(ValueError):
            js.spark_config(bad, env={})


def test_write_tables_publishes_atomically_and_discards_on_failure(spark, tmp_path):
    from vasp_model.data import storage

    final = str(tmp_path / "features" / "dt=2024-01-01")
    frame = spark.createDataFrame([(1, "a")], "x int, y string")
    js.write_tables({"t": frame}, final, {"n": 1})
    assert storage.is_published(final) and storage.read_json(f"{final}/{storage.MANIFEST}") == {"n": 1}

    def boom(_staging):
        raise RuntimeError("manifest failed")

    with pytest.raises(RuntimeError):
        js.write_tables({"t": frame}, final, boom)
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"n": 1}  # the old partition is untouched
    # only the published version is left
    assert os.listdir(tmp_path / "features" / "_versions" / "dt=2024-01-01") == [os.path.basename(os.readlink(final))]


def test_part_files_lose_the_write_job_id(tmp_path):
    """Spark names part files after a random write-job id; renamed, a rewrite of the same rows is the same files."""
    uuid = "3f2b8c1e-0a4d-4e6f-9b7a-1c2d3e4f5a6b"
    table = tmp_path / "table"
    table.mkdir()
    names = [f"part-00000-{uuid}-c000.snappy.parquet", f".part-00000-{uuid}-c000.snappy.parquet.crc", "_SUCCESS"]
    for name in [*names, f"part-00001-{uuid}-c000.snappy.parquet"]:
        (table / name).write_bytes(name.encode())
    js.stable_file_names(str(table))
    assert sorted(os.listdir(table)) == sorted(
        [
            ".part-00000-c000.snappy.parquet.crc",
            "_SUCCESS",
            "part-00000-c000.snappy.parquet",
            "part-00001-c000.snappy.parquet",
        ]
    )
    assert (table / "part-00000-c000.snappy.parquet").read_bytes() == names[0].encode()  # moved, not rewritten
