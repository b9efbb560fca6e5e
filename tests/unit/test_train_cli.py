"""``vasp train`` end to end on a tiny features/dt=D built by the build job."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.data import layout, storage
from vasp_model.data.features import load_features

DATE = "2026-02-03"
LOW_RATED = 3  # items each test user rated without liking them


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Features for DATE built by the build job from 240 users of two taste groups: each likes 7 of its
    group's 15 items (rating 5) and rated ``LOW_RATED`` of the other group's items without liking them."""
    rng = np.random.default_rng(0)
    users, items, ratings = [], [], []
    for u in range(240):
        g = u % 2
        liked = rng.choice(np.arange(g * 15, g * 15 + 15), 7, replace=False)
        disliked = rng.choice(np.arange((1 - g) * 15, (1 - g) * 15 + 15), LOW_RATED, replace=False)
        for i, rating in [*((i, 5.0) for i in liked), *((i, 2.0) for i in disliked)]:
            users.append(f"u{u}")
            items.append(f"i{i}")
            ratings.append(rating)
    text = events_csv(users, items, ratings)
    built, _ = built_features(spark, tmp_path_factory, text, DATE, heldout_users=24, ab_copies=2, seed=0)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)  # vasp train publishes models/ beside it: never into the shared build
    return wh


def _train(warehouse: str, checkpoint_dir, *flags: str) -> int:
    from vasp_model import cli

    argv = ["train", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--epochs", "2", "--hidden", "12"]
    return cli.main([*argv, "--no-tracking", "--quiet", "--checkpoint-dir", str(checkpoint_dir), *flags])


def _lists(out: str) -> dict[str, list[str]]:
    topk = pq.read_table(f"{out}/test_topk.parquet").to_pandas()
    assert list(topk.columns) == ["user_id", "rank", "item_id"]
    return {u: rows.sort_values("rank").item_id.tolist() for u, rows in topk.groupby("user_id")}


def test_train_cli_publishes_model_metrics_and_test_topk(warehouse, tmp_path, capsys):
    from vasp_model.recommenders.bundle import ModelBundle

    assert _train(warehouse, tmp_path / "ckpt") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["test"]) == {"vasp", "ease", "popularity"}
    assert 0 <= summary["test"]["vasp"]["ndcg@100"] <= 1

    out = layout.models_dir(warehouse, DATE)
    assert storage.is_published(out)
    assert {"model", "metrics.json", "history.json", "test_topk.parquet", storage.MANIFEST} <= set(os.listdir(out))
    metrics = json.load(open(f"{out}/metrics.json"))
    assert metrics["test"]["vasp"]["ndcg@100"] == pytest.approx(summary["test"]["vasp"]["ndcg@100"])
    assert len(json.load(open(f"{out}/history.json"))) == 2
    assert storage.read_json(f"{out}/{storage.MANIFEST}")["exclude"] == "all"
    bundle = ModelBundle.load(f"{out}/model")
    assert bundle.metadata["config"]["model"]["hidden"] == 12
    lineage = storage.read_json(f"{out}/{storage.MANIFEST}")["features_manifest"]
    assert lineage["input_digest"] == load_features(warehouse, DATE).manifest["input"]["sha256"]

    # beside it, the EASE the training fitted and measured (the fallback while VASP has no champion)
    from vasp_model.evaluation.protocol import evaluate_recommender
    from vasp_model.recommenders.bundle import EaseBundle, load_bundle

    ease = load_bundle(layout.ease_bundle_dir(warehouse, DATE))
    assert isinstance(ease, EaseBundle) and ease.metadata["lambda"] == metrics["ease_lambda"]
    test = load_features(warehouse, DATE).test
    scored = evaluate_recommender(ease, test.fold_in, test.holdout, load_features(warehouse, DATE).popularity)
    assert scored["ndcg@100"] == pytest.approx(metrics["test"]["ease"]["ndcg@100"], abs=1e-9)

    # test_topk under the default rule: top 100 (here: every item left) per test user, leaving out
    # everything the user interacted with except the held-out items (what the metrics score)
    features = load_features(warehouse, DATE)
    test, ids = features.test, np.asarray([str(i) for i in features.item_ids], dtype=object)
    lists = _lists(out)
    assert set(lists) == set(test.user_ids)
    for p, user in enumerate(test.user_ids):
        low_rated = set(ids[(test.consumed[p] - test.fold_in[p] - test.holdout[p]).indices])
        assert len(low_rated) == LOW_RATED
        left_out = set(ids[test.fold_in[p].indices]) | low_rated
        assert set(lists[user]) == set(ids) - left_out and len(lists[user]) == len(set(lists[user]))

    # under `positives` the low-rated items are candidates again, and the lists recompute the metrics
    assert _train(warehouse, tmp_path / "ckpt-positives", "--exclude", "positives") == 0
    metrics = json.load(open(f"{out}/metrics.json"))
    lists = _lists(out)
    index = {item: j for j, item in enumerate(ids)}
    from vasp_model.evaluation.metrics import evaluate_topk

    mat = np.full((test.n_users, 100), -1)
    for p, user in enumerate(test.user_ids):
        assert set(lists[user]) == set(ids) - set(ids[test.fold_in[p].indices])
        mat[p, : len(lists[user])] = [index[item] for item in lists[user]]
    recomputed = evaluate_topk(mat, test.holdout, features.popularity)
    assert recomputed["ndcg@100"] == pytest.approx(metrics["test"]["vasp"]["ndcg@100"], abs=1e-9)


def test_train_cli_rejects_bad_config(warehouse):
    from vasp_model import cli

    assert cli.main(["train", "--warehouse", warehouse, "--date", DATE, "--dropout", "1.5", "--no-tracking"]) == 1
    assert cli.main(["train", "--warehouse", warehouse, "--date", "2020-01-01", "--no-tracking"]) == 1
