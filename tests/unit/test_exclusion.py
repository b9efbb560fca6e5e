"""The exclusion rule (``exclude``) on a small input through the real build job and the real scoring job:
what a user rated without liking it is never recommended under ``all`` (the default), may be under
``positives``, and the list check flags it under ``all``."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from vasp_model.data import layout, storage
from vasp_model.pipeline import checks

DATE = "2026-05-01"
N_ITEMS = 20
DUP_USER, COLD_USER = "u0", "cold"  # u0 rates a liked item twice; cold has no positive at all


def _ratings() -> pd.DataFrame:
    """30 users with 8 liked items each and 3 items rated at or below the threshold (3.5), a user with
    only low ratings, and an item nobody likes (outside the vocabulary)."""
    rows = []
    for u in range(30):
        liked = [(u + 3 * j) % N_ITEMS for j in range(8)]
        disliked = [i for i in range(N_ITEMS) if i not in liked][u % 5 : u % 5 + 3]
        rows += [(f"u{u}", f"i{i}", 4.0 + (i % 2)) for i in liked]
        rows += [(f"u{u}", f"i{i}", r) for i, r in zip(disliked, (1.0, 2.5, 3.5), strict=True)]
    rows += [(COLD_USER, "i1", 2.0), (COLD_USER, "i2", 3.0), (COLD_USER, "i99", 1.0)]
    rows += [(DUP_USER, "i1", 4.5), (DUP_USER, "i1", 1.0)]  # duplicates: the highest rating wins
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory):
    """DATE built from the ratings by the build job, and an (untrained) VASP bundle of its vocabulary."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jobs.build_matrices import BuildConfig, build
    from vasp_model.core.config import ModelConfig
    from vasp_model.nn.model import build_model
    from vasp_model.recommenders.bundle import ModelBundle

    root = tmp_path_factory.mktemp("exclusion")
    ratings = _ratings()
    ratings.to_csv(root / "ratings.csv", index=False)
    warehouse = str(root / "warehouse")
    manifest = build(spark, str(root / "ratings.csv"), warehouse, DATE, BuildConfig(heldout_users=3, ab_copies=1))
    items = pq.read_table(layout.feature_table(warehouse, DATE, "items")).to_pandas().sort_values("item_idx")
    config = ModelConfig(hidden=16, latent=8, encoder_blocks=1, decoder_blocks=1, ease_init="glorot_uniform")
    bundle = ModelBundle(build_model(len(items), config, seed=0), items.item_id.to_numpy(object), items.popularity)
    bundle.save(str(root / "bundle"))
    return {"warehouse": warehouse, "manifest": manifest, "ratings": ratings, "bundle": str(root / "bundle")}


def _table(night, name: str) -> pd.DataFrame:
    users = pq.read_table(layout.feature_table(night["warehouse"], DATE, "users")).to_pandas()
    rows = pq.read_table(layout.feature_table(night["warehouse"], DATE, name)).to_pandas()
    return rows.merge(users[["user_idx", "user_id"]], on="user_idx")


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame.user_id.astype(str), frame.item_id.astype(str), strict=True))


def test_build_writes_every_rated_pair_to_consumed_and_only_positives_to_interactions(night):
    ratings, counts = night["ratings"], night["manifest"]["counts"]
    consumed, interactions = _table(night, "consumed"), _table(night, "interactions")
    positives = ratings.groupby(["user_id", "item_id"], as_index=False).rating.max().query("rating > 3.5")
    assert _pairs(consumed) == _pairs(ratings) and len(consumed) == len(_pairs(ratings))
    assert _pairs(interactions) == _pairs(positives)
    vocabulary = set(
        pq.read_table(layout.feature_table(night["warehouse"], DATE, "items")).column("item_id").to_pylist()
    )
    assert (
        "i99" not in vocabulary and consumed.item_idx.isna().tolist() == (~consumed.item_id.isin(vocabulary)).tolist()
    )
    assert counts["consumed"] == len(consumed) and counts["consumed_oov"] == int(consumed.item_idx.isna().sum()) == 1
    assert counts["used_rows"] == counts["consumed"]  # the distinct (user, item) pairs of the input


def _score(spark, night, exclude: str, top_n: int = N_ITEMS) -> tuple[pd.DataFrame, dict]:
    from jobs.score import score

    manifest = score(spark, DATE, night["warehouse"], model_uri=night["bundle"], top_n=top_n, exclude=exclude)
    recs = checks.read_table(layout.recommendations_dir(night["warehouse"], DATE))
    return recs, manifest


@pytest.mark.parametrize("exclude", ["all", "positives", "none"])
def test_scoring_leaves_out_what_the_rule_says_and_the_check_agrees(spark, night, exclude):
    recs, manifest = _score(spark, night, exclude)
    features = layout.features_dir(night["warehouse"], DATE)
    users = checks.read_table(f"{features}/users", columns=["user_idx", "user_id"])
    excluded = checks.excluded_items(features, exclude)
    vocabulary = set(pq.read_table(f"{night['bundle']}/items.parquet").column("item_id").to_pylist())
    counts = checks.check_recommendations(recs, users, excluded, N_ITEMS, exclude, manifest, vocabulary)
    assert manifest["exclude"] == counts["exclude"] == exclude

    listed = _pairs(recs)
    low_rated = _pairs(
        night["ratings"].groupby(["user_id", "item_id"], as_index=False).rating.max().query("rating <= 3.5")
    )
    low_rated = {(u, i) for u, i in low_rated if i in vocabulary}
    positives = {(u, i) for u, i in _pairs(_table(night, "interactions")) if i in vocabulary}
    assert len(low_rated) > 30 and (COLD_USER, "i1") in low_rated and (DUP_USER, "i1") in positives
    # every list holds every item the rule does not leave out (top_n = the vocabulary)
    assert listed.isdisjoint(low_rated) == (exclude == "all")
    assert listed.isdisjoint(positives) == (exclude != "none")
    expected_excluded = {"all": low_rated | positives, "positives": positives, "none": set()}[exclude]
    assert manifest["counts"]["excluded_candidates"] == len(expected_excluded) == counts["excluded_candidates"]
    # the cold user (no positive: the popularity list) is masked too
    cold = recs[recs.user_id == COLD_USER]
    assert cold.fallback.all() and (len(cold) == N_ITEMS - 2) == (exclude == "all")


def test_the_check_flags_a_low_rated_item_under_all(spark, night):
    """Lists that hold items their users rated low pass the check under ``positives`` and fail under ``all``."""
    recs, manifest = _score(spark, night, "positives")
    features = layout.features_dir(night["warehouse"], DATE)
    users = checks.read_table(f"{features}/users", columns=["user_idx", "user_id"])
    vocabulary = set(pq.read_table(f"{night['bundle']}/items.parquet").column("item_id").to_pylist())
    positives = checks.excluded_items(features, "positives")
    checks.check_recommendations(recs, users, positives, N_ITEMS, "positives", manifest, vocabulary)
    consumed = checks.excluded_items(features, "all")
    assert len(consumed) > len(positives)
    with pytest.raises(ValueError, match=r"already seen \(exclude=all\)"):
        checks.check_recommendations(recs, users, consumed, N_ITEMS, "all", {**manifest, "exclude": "all"}, vocabulary)
    with pytest.raises(ValueError, match="exclude=positives, expected all"):
        checks.check_recommendations(recs, users, consumed, N_ITEMS, "all", manifest, vocabulary)


def test_scoring_an_old_date_without_consumed_fails_clearly(spark, night, tmp_path):
    import shutil

    from jobs.score import score

    day = "2026-05-02"
    shutil.copytree(layout.features_dir(night["warehouse"], DATE), layout.features_dir(night["warehouse"], day))
    shutil.rmtree(layout.feature_table(night["warehouse"], day, "consumed"))
    with pytest.raises(FileNotFoundError, match="exclude=all needs the 'consumed' table"):
        score(spark, day, night["warehouse"], model_uri=night["bundle"], top_n=5)
    assert not storage.exists(layout.recommendations_dir(night["warehouse"], day))
    assert score(spark, day, night["warehouse"], model_uri=night["bundle"], top_n=5, exclude="positives")[
        "exclude"
    ] == ("positives")


@pytest.fixture(scope="module")
def implicit_night(spark, night, tmp_path_factory):
    """The same users' liked items as implicit events (no rating column: every event a positive), built."""
    from jobs.build_matrices import BuildConfig, build

    root = tmp_path_factory.mktemp("implicit")
    events = night["ratings"].query("rating > 3.5")[["user_id", "item_id"]]
    events.to_csv(root / "events.csv", index=False)
    warehouse = str(root / "warehouse")
    manifest = build(spark, str(root / "events.csv"), warehouse, DATE, BuildConfig(heldout_users=3, ab_copies=1))
    return {**night, "warehouse": warehouse, "manifest": manifest}


def test_the_consumed_table_is_read_only_where_it_holds_more_than_the_positives(night, implicit_night):
    from jobs.score import exclusion_source

    counts = implicit_night["manifest"]["counts"]
    assert counts["consumed"] == counts["interactions"]
    assert _pairs(_table(implicit_night, "consumed")) == _pairs(_table(implicit_night, "interactions"))
    assert exclusion_source("all", implicit_night["manifest"]) == "interactions"
    assert exclusion_source("all", night["manifest"]) == "consumed"  # low ratings: more consumed than positives
    assert exclusion_source("all", {}) == "consumed"  # no counts: read it
    assert exclusion_source("positives", night["manifest"]) == "interactions"
    assert exclusion_source("none", implicit_night["manifest"]) is None


def test_implicit_lists_under_all_are_those_under_positives(spark, implicit_night):
    """Read from the positives alone, ``all`` leaves out exactly what ``positives`` does, and says ``all``."""
    by_positives, positives_manifest = _score(spark, implicit_night, "positives")
    by_all, manifest = _score(spark, implicit_night, "all")
    assert manifest["exclude"] == "all" and positives_manifest["exclude"] == "positives"
    assert manifest["counts"] == positives_manifest["counts"] and manifest["counts"]["excluded_candidates"] > 0
    order = ["user_id", "rank"]
    pd.testing.assert_frame_equal(
        by_all.sort_values(order).reset_index(drop=True), by_positives.sort_values(order).reset_index(drop=True)
    )
    features = layout.features_dir(implicit_night["warehouse"], DATE)
    users = checks.read_table(f"{features}/users", columns=["user_idx", "user_id"])
    consumed = checks.excluded_items(features, "all")
    vocabulary = set(pq.read_table(f"{implicit_night['bundle']}/items.parquet").column("item_id").to_pylist())
    checks.check_recommendations(by_all, users, consumed, N_ITEMS, "all", manifest, vocabulary)
