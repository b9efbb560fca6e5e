"""The given split (LightGCN's train.txt / test.txt as provided): the build keeps the test file's
positives per known user, the features score every such user from all of its positives, and the
metrics follow LightGCN's definitions @20."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vasp_jobs.build_matrices import BuildConfig, build, config_from_args, to_argv
from vasp_model.data.features import load_features
from vasp_model.evaluation.given import LIGHTGCN_KEYS, evaluate_given, lightgcn_metrics
from vasp_model.recommenders.baselines import EASE, Popularity

DATE = "2026-11-30"


def test_lightgcn_metrics_by_hand():
    # user 0: test items {0, 1, 9(outside the vocabulary)} -> 3 test items; top 2 = [1, 4]: one hit at rank 1
    # user 1: test item {3}; top 2 = [2, 3]: one hit at rank 2
    holdout = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=np.float32))
    got = lightgcn_metrics(np.array([[1, 4], [2, 3]]), holdout, test_items=[3, 1], k=2)
    np.testing.assert_allclose(got["lightgcn_recall@2"], [1 / 3, 1.0])
    np.testing.assert_allclose(got["lightgcn_precision@2"], [0.5, 0.5])
    # nDCG: ideal DCG over min(|test|, k) hits: user 0 1 + 1/log2(3), user 1: 1
    np.testing.assert_allclose(got["lightgcn_ndcg@2"], [1 / (1 + 1 / np.log2(3)), 1 / np.log2(3)])
    with pytest.raises(ValueError, match="test_items"):
        lightgcn_metrics(np.array([[1, 4], [2, 3]]), holdout, test_items=[1, 1], k=2)


def _write(path, rows):
    path.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def given_build(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("given")
    rng = np.random.default_rng(0)
    train_rows, test_rows = [], []
    for u in range(120):
        items = rng.choice(40, size=12, replace=False)
        train_rows.append([u, *items[:9]])
        test_rows.append([u, *items[9:]])
    test_rows.append([5, 1000])  # a second line for user 5: an item no train user has
    test_rows.append([999, 1, 2])  # a user the training file does not know
    test_rows.append(["7 8 x\tbad"])  # an unreadable line
    test_rows.append([7, test_rows[7][1]])  # a repeat of one of user 7's test pairs
    train, test = _write(tmp / "train.txt", train_rows), _write(tmp / "test.txt", test_rows)
    warehouse = str(tmp / "wh")
    config = BuildConfig(format="user-items", heldout_users=10, ab_copies=1)
    manifest = build(spark, train, warehouse, DATE, config, test_input=test)
    return manifest, warehouse, test_rows


def test_build_keeps_the_given_test_items_and_counts_every_row(given_build):
    manifest, warehouse, test_rows = given_build
    counts = manifest["given"]["counts"]
    assert manifest["given"]["input"]["format"]["format"] == "user-items"
    parts = ("positives", "duplicate_rows", "non_positive_rows", "quarantined_rows")
    assert counts["input_rows"] == 120 * 3 + 1 + 2 + 1 + 1 == sum(counts[k] for k in parts)
    assert counts["quarantined_rows"] == 1 == sum(manifest["given"]["quarantine_by_reason"].values())
    assert counts["duplicate_rows"] == 1 and counts["non_positive_rows"] == 0
    assert counts["users"] == 120 and counts["unknown_user_positives"] == 2
    assert counts["oov"] >= 1 and counts["holdout"] + counts["oov"] == 120 * 3 + 1
    assert manifest["counts"]["quarantined_rows"] == 0  # the training file's own counts are unchanged
    assert "given" in manifest["tables"]


def test_features_score_every_given_user_from_all_of_its_positives(given_build):
    manifest, warehouse, _ = given_build
    features = load_features(warehouse, DATE)
    given = features.given
    assert given.n_users == 120 and features.given_test_items.sum() == 120 * 3 + 1
    assert given.fold_in.sum() == 120 * 9 - manifest["counts"]["interactions_oov"]  # validation and test users too
    assert given.holdout.sum() == manifest["given"]["counts"]["holdout"]
    assert given.fold_in.multiply(given.holdout).nnz == 0
    assert features.given_test_items[list(given.user_ids).index("5")] == 4
    ease = EASE(10.0).fit(features.train)
    popularity = Popularity().fit(features.train)
    got = evaluate_given({"ease": (ease, features.n_items), "popularity": (popularity, features.n_items)}, features)
    for model in ("ease", "popularity"):
        m = got[model]
        assert 0.0 <= m["lightgcn_recall@20"] <= 1.0 and 0.0 <= m["lightgcn_ndcg@20"] <= 1.0
        assert m["lightgcn_users"] == 120
    # random data: a top 20 of the ~31 unseen items holds about 20/31 of the known test items
    assert 0.4 < got["ease"]["lightgcn_recall@20"] < 0.9


def test_the_given_split_and_its_intervals_go_beside_the_test_users(given_build, tmp_path):
    """VASP minus each baseline on the given split's users, as on the test users (any recommender over the
    features' items stands in for the trained model here)."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from vasp_model.evaluation.compare import compare, read_per_user, side
    from vasp_model.evaluation.protocol import evaluate_recommender_per_user
    from vasp_model.pipeline.training import add_protocol_metrics, per_user_table

    _, warehouse, _ = given_build
    features = load_features(warehouse, DATE)
    vasp = EASE(3.0).fit(features.train)
    _, test_vasp = evaluate_recommender_per_user(
        vasp, features.test.fold_in, features.test.holdout, features.popularity
    )
    result = SimpleNamespace(
        bundle=vasp,
        ease=EASE(300.0).fit(features.train),
        metrics={"intervals": {"test": {}}},
        per_user={"test": {"vasp": test_vasp}},
    )
    add_protocol_metrics(result, features)
    given, intervals = result.metrics["given"], result.metrics["intervals"]["given"]
    assert set(given) == {"vasp", "ease", "popularity"} and set(intervals) == {"vasp-ease", "vasp-popularity"}
    for pair, baseline in (("vasp-ease", "ease"), ("vasp-popularity", "popularity")):
        assert set(intervals[pair]) == {"ndcg@100", "recall@20", "recall@50", *LIGHTGCN_KEYS}
        for metric, d in intervals[pair].items():
            assert d["diff"] == pytest.approx(given["vasp"][metric] - given[baseline][metric])
            assert d["low"] <= d["diff"] <= d["high"] and d["users"] == 120
    assert result.metrics["intervals"]["test"] == {}  # the test users' intervals are left as they were

    # the per-user table keeps the given users beside the test users: a later `vasp compare --split given`
    # pairs them; LightGCN's columns are null on the test users' rows
    path = tmp_path / "per_user_metrics.parquet"
    pq.write_table(per_user_table(result.per_user, features), path)
    table = read_per_user(str(path))
    assert table.loc[table["split"] == "test", list(LIGHTGCN_KEYS)].isna().all().all()
    assert (table["split"] == "test").sum() == features.test.n_users
    sides = [side(table, m, "given", list(LIGHTGCN_KEYS), "run") for m in ("vasp", "ease")]
    assert len(sides[0]) == 120 and set(sides[0].index) == {str(u) for u in features.given.user_ids}
    compared = compare([sides], list(LIGHTGCN_KEYS))
    for metric, d in compared.differences.items():
        assert compared.means_a[metric] == pytest.approx(given["vasp"][metric])
        assert d.diff == pytest.approx(intervals["vasp-ease"][metric]["diff"])


def test_given_split_flags_round_trip_and_conflicts(tmp_path):
    import argparse

    from vasp_jobs.build_matrices import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--input", "train.txt", "--test-input", "test.txt", "--date", DATE, "--warehouse", str(tmp_path)]
    config = config_from_args(parser.parse_args(argv))
    assert config.test_input == "test.txt"
    assert config_from_args(parser.parse_args(to_argv(config))) == config
    with pytest.raises(ValueError, match="two test protocols"):
        config_from_args(parser.parse_args([*argv, "--temporal-holdout-days", "3"]))
    with pytest.raises(ValueError, match="event log"):
        config_from_args(parser.parse_args(["--events", "logs", "--test-input", "t.txt", "--date", DATE]))


def test_given_metrics_round_trip_through_mlflow_keys():
    from vasp_model.evaluation.metrics import model_test_metrics
    from vasp_model.mlops.tracking import from_mlflow_metrics, to_mlflow_metrics

    report = {"test": {"vasp": {"ndcg@100": 0.4}}, "validation": {}, "given": {"ease": {"lightgcn_recall@20": 0.17}}}
    keys = to_mlflow_metrics(report)
    assert keys["given.ease.lightgcn_recall_at_20"] == 0.17
    back = from_mlflow_metrics(keys)
    assert model_test_metrics(back, "ease", "given") == {"lightgcn_recall@20": 0.17}
    assert "given" not in from_mlflow_metrics(to_mlflow_metrics({"test": {"vasp": {"ndcg@100": 0.4}}}))
