"""Data-contract tests of the Spark build job on real data read in place from ../shared/data.

ML-1M and ML-100K must give the published vae_cf-protocol counts; every user satisfies the
A/B and fold-in invariants; user splits are disjoint; rerunning a date gives identical tables
and replaces only that date. Last.fm, CiteULike-a, Gowalla (LightGCN) and Amazon Video Games
(SASRec) go through the same job without loss.
"""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pytest
from shared_data import CITEULIKE, ML1M, data_path

from vasp_jobs.build_matrices import BuildConfig, build
from vasp_model.data import layout, storage

ML100K = "ml-100k/u.data"
LASTFM = "hetrec2011-lastfm-2k/user_artists.dat"
GOWALLA = "gowalla-lightgcn/train.txt"
GOWALLA_TEST = "gowalla-lightgcn/test.txt"
AMAZON_GAMES = "amazon-games-sasrec/Video.txt"

DATE, OTHER_DATE = "2024-05-01", "2024-05-02"
TABLES = ("items", "users", "interactions", "consumed", "validation", "test", "train_ab", "quarantine")


def _table(warehouse: str, date: str, name: str) -> pd.DataFrame:
    path = layout.feature_table(warehouse, date, name)
    return ds.dataset(path, format="parquet", ignore_prefixes=[".", "_"]).to_table().to_pandas()


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def check_contract(warehouse: str, date: str, manifest: dict, config: BuildConfig) -> dict[str, pd.DataFrame]:
    """Every invariant of the features contract, on every user."""
    t = {name: _table(warehouse, date, name) for name in TABLES}
    counts = manifest["counts"]
    users, items = t["users"], t["items"]
    assert counts["input_rows"] == counts["used_rows"] + counts["quarantined_rows"] + counts["duplicate_rows"]
    assert len(t["quarantine"]) == counts["quarantined_rows"]
    # ids and indices
    assert sorted(users["user_idx"]) == list(range(len(users))) and users["user_id"].is_unique
    assert sorted(items["item_idx"]) == list(range(len(items))) and items["item_id"].is_unique
    assert str(users["user_idx"].dtype) == "int32" and str(items["item_idx"].dtype) == "int32"
    ordered = items.sort_values("item_idx")
    assert (ordered["popularity"].diff().dropna() <= 0).all()
    assert set(users["split"]) <= {"train", "validation", "test", "excluded"}
    # positives per user and split membership
    inter = t["interactions"]
    assert len(inter) == counts["positives"] == counts["interactions"]
    n_pos = inter.groupby("user_idx").size().reindex(users["user_idx"], fill_value=0).to_numpy()
    kept = n_pos >= config.min_user_interactions
    assert ((users["split"] != "excluded").to_numpy() == kept).all()
    assert int(kept.sum()) == counts["users_kept"] and int(n_pos[kept].sum()) == counts["positives_kept"]
    split_of = dict(zip(users["user_idx"], users["split"], strict=True))
    # vocabulary = items of train users; popularity = number of train users
    train_inter = inter[inter["user_idx"].map(split_of) == "train"]
    assert set(train_inter["item_id"]) == set(items["item_id"])
    pop = train_inter.groupby("item_id").size()
    assert (items.set_index("item_id")["popularity"] == pop.reindex(items["item_id"]).to_numpy()).all()
    assert inter["item_idx"].isna().sum() == counts["interactions_oov"]
    # consumed: every distinct (user, item) of the input whatever the rating, the positives among them
    consumed = t["consumed"]
    assert len(consumed) == counts["consumed"] == counts["used_rows"] >= len(inter)
    assert not consumed.duplicated(["user_idx", "item_id"]).any()
    assert len(inter.merge(consumed, on=["user_idx", "item_id"])) == len(inter)
    vocab_idx = consumed["item_id"].map(items.set_index("item_id")["item_idx"])
    assert vocab_idx.fillna(-1).astype(int).tolist() == consumed["item_idx"].fillna(-1).astype(int).tolist()
    assert consumed["item_idx"].isna().sum() == counts["consumed_oov"]
    # held-out users: fold-in + holdout = the user's in-vocabulary positives; int(0.2 n) held out
    known = inter.dropna(subset=["item_idx"])
    for split in ("validation", "test"):
        held = t[split]
        assert set(held["user_idx"].map(split_of)) <= {split}
        want = known[known["user_idx"].map(split_of) == split]
        got_pairs = set(zip(held["user_idx"], held["item_idx"], strict=True))
        assert got_pairs == set(zip(want["user_idx"], want["item_idx"].astype(int), strict=True))
        assert len(got_pairs) == len(held)
        per_user = held.groupby("user_idx")["role"].agg(n="size", holdout=lambda r: int((r == "holdout").sum()))
        expect = per_user["n"].map(lambda n: int(0.2 * n) if n >= 5 else 0)
        assert (per_user["holdout"] == expect).all()
        assert counts[f"{split}_oov_dropped"] == counts[f"{split}_positives"] - len(held)
    # disjoint splits of sizes from the config
    n_held = counts["heldout_users_per_split"]
    assert (users["split"] == "validation").sum() == n_held == (users["split"] == "test").sum()
    # A/B: per (user, copy) halves balanced, disjoint, union = the user's items
    ab = t["train_ab"]
    assert set(ab["copy"]) == set(range(config.ab_copies))
    assert set(ab["user_idx"].map(split_of)) == {"train"}
    assert len(ab) == config.ab_copies * len(train_inter) == counts["train_ab_rows"]
    grouped = ab.groupby(["user_idx", "copy"])
    sizes = grouped["half"].agg(a=lambda h: int((h == "A").sum()), n="size")
    assert ((sizes["n"] - 2 * sizes["a"]).between(0, 1)).all()
    assert not ab.duplicated(["user_idx", "copy", "item_idx"]).any()  # A ∩ B = ∅, no repeats
    train_sizes = train_inter.groupby("user_idx").size()
    assert (sizes["n"].droplevel("copy") == train_sizes.reindex(sizes.index.get_level_values(0)).to_numpy()).all()
    return t


def _headline(counts: dict) -> tuple[int, int, int, int]:
    """The counts the issue fixes per data set: positives, users with one, users kept, positives kept."""
    return (counts["positives"], counts["users_with_positive"], counts["users_kept"], counts["positives_kept"])


@pytest.mark.realdata(ML1M)
@pytest.mark.slow  # the features of the run's ML-1M night (tests/conftest.py)
def test_ml1m_counts(ml1m_features):
    _, _, config, manifest = ml1m_features
    assert config == BuildConfig()  # the build job's defaults
    c = manifest["counts"]
    assert _headline(c) == (575_281, 6_038, 6_034, 575_272)
    assert c["input_rows"] == 1_000_209 and c["users"] == 6_040 and c["quarantined_rows"] == 0
    assert c["validation_users"] == c["test_users"] == 603  # ~600 each, the vae_cf ML-1M protocol
    assert manifest["schema_version"] == layout.SCHEMA_VERSION and manifest["input"]["sha256"]


@pytest.mark.realdata(ML1M)
@pytest.mark.slow
def test_ml1m_contract_on_every_user(ml1m_features):
    warehouse, date, config, manifest = ml1m_features
    check_contract(warehouse, date, manifest, config)


@pytest.mark.realdata(ML100K)
def test_ml100k_counts_contract_and_rerun(spark, tmp_path):
    ml100k = str(data_path(ML100K))
    warehouse = str(tmp_path / "wh")
    config = BuildConfig(ab_copies=3)
    first = build(spark, ml100k, warehouse, DATE, config)
    c = first["counts"]
    assert _headline(c) == (55_375, 942, 938, 55_361)
    tables = check_contract(warehouse, DATE, first, config)
    other = build(spark, ml100k, warehouse, OTHER_DATE, BuildConfig(ab_copies=3, seed=5))
    other_manifest = storage.read_json(f"{layout.features_dir(warehouse, OTHER_DATE)}/{storage.MANIFEST}")
    # rerun DATE: identical tables, OTHER_DATE untouched
    second = build(spark, ml100k, warehouse, DATE, config)
    assert second["counts"] == first["counts"] and second["input"]["sha256"] == first["input"]["sha256"]
    for name in TABLES:
        pd.testing.assert_frame_equal(_sorted(_table(warehouse, DATE, name)), _sorted(tables[name]))
    assert storage.read_json(f"{layout.features_dir(warehouse, OTHER_DATE)}/{storage.MANIFEST}") == other_manifest
    assert storage.published_dates(warehouse, "features") == [DATE, OTHER_DATE]
    # another seed gives other splits
    assert other["counts"]["test_users"] == c["test_users"]
    a, b = _table(warehouse, DATE, "users"), _table(warehouse, OTHER_DATE, "users")
    assert set(a[a.split == "test"]["user_id"]) != set(b[b.split == "test"]["user_id"])


@pytest.mark.parametrize(
    "path, fmt, expect",
    [
        pytest.param(
            LASTFM,
            "lastfm",
            {"input_rows": 92_834, "users": 1_892, "positives": 92_834},
            marks=pytest.mark.realdata(LASTFM),
        ),
        pytest.param(
            CITEULIKE,
            "citeulike",
            {"input_rows": 204_986, "users": 5_551, "positives": 204_986},
            marks=pytest.mark.realdata(CITEULIKE),
        ),
    ],
)
def test_implicit_datasets_no_loss(spark, tmp_path, path, fmt, expect):
    warehouse = str(tmp_path / "wh")
    config = BuildConfig(ab_copies=1)
    manifest = build(spark, str(data_path(path)), warehouse, DATE, config)
    c = manifest["counts"]
    assert manifest["input"]["format"]["format"] == fmt
    assert c["input_rows"] == c["used_rows"] + c["quarantined_rows"] + c["duplicate_rows"]
    assert {k: c[k] for k in expect} == expect
    assert c["quarantined_rows"] == 0 and c["duplicate_rows"] == 0
    assert 0 < c["items"] and c["users_kept"] > 0.8 * c["users"]
    check_contract(warehouse, DATE, manifest, config)


@pytest.mark.parametrize(
    "path, fmt, expect, max_items, test_input",
    [
        pytest.param(
            GOWALLA,
            "auto",
            {"input_rows": 810_128, "users": 29_858, "positives": 810_128},
            40_981,
            GOWALLA_TEST,
            marks=pytest.mark.realdata(GOWALLA, GOWALLA_TEST),
        ),
        pytest.param(
            AMAZON_GAMES,
            "user-item-seq",
            {"input_rows": 287_107, "users": 31_013, "positives": 287_107},
            23_715,
            None,
            marks=pytest.mark.realdata(AMAZON_GAMES),
        ),
    ],
)
def test_user_item_line_formats_no_loss(spark, tmp_path, path, fmt, expect, max_items, test_input):
    """LightGCN's user-items (autodetected) and SASRec's user-item-seq: the counts of SOURCES.md, nothing
    quarantined; SASRec's line order is each interaction's timestamp. Gowalla's test.txt as the given
    split: all of its 217,242 pairs kept for its 29,858 users (every one of them known to train.txt)."""
    warehouse = str(tmp_path / "wh")
    config = BuildConfig(ab_copies=1, format=fmt)
    given = str(data_path(test_input)) if test_input else None
    manifest = build(spark, str(data_path(path)), warehouse, DATE, config, test_input=given)
    c = manifest["counts"]
    if test_input:
        g = manifest["given"]["counts"]
        assert g["input_rows"] == g["positives"] == g["holdout"] + g["oov"] == 217_242
        assert g["users"] == 29_858 and g["quarantined_rows"] == 0 and g["unknown_user_positives"] == 0
        assert g["duplicate_rows"] == g["non_positive_rows"] == 0 and manifest["given"]["quarantine_by_reason"] == {}
        held = _table(warehouse, DATE, "given")
        assert len(held) == 217_242 and held["item_idx"].isna().sum() == g["oov"]
    assert manifest["input"]["format"]["format"] == ("user-items" if fmt == "auto" else fmt)
    assert {k: c[k] for k in expect} == expect
    assert c["quarantined_rows"] == 0 and c["duplicate_rows"] == 0
    t = check_contract(warehouse, DATE, manifest, config)
    assert 0 < c["items"] <= t["consumed"]["item_id"].nunique() <= max_items
    if fmt == "user-item-seq":
        assert t["consumed"]["item_id"].nunique() == max_items  # every item of the file
        lines = pd.read_csv(data_path(path), sep=" ", header=None, names=["user_id", "item_id"], dtype=str)
        lines["timestamp"] = range(1, len(lines) + 1)
        first = lines.groupby(["user_id", "item_id"], as_index=False)["timestamp"].min()
        users = t["users"].set_index("user_idx")["user_id"]
        got = t["consumed"].assign(user_id=t["consumed"]["user_idx"].map(users))[["user_id", "item_id", "timestamp"]]
        pd.testing.assert_frame_equal(_sorted(got), _sorted(first))
