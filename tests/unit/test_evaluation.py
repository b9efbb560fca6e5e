"""evaluate_recommender, map_topk_ids (champion re-scoring across vocabularies), baseline_metrics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import checkerboard

from vasp_model.data.features import Features
from vasp_model.evaluation.metrics import METRIC_KEYS
from vasp_model.evaluation.protocol import evaluate_recommender, evaluate_recommender_per_user, map_topk_ids
from vasp_model.recommenders.baselines import Popularity, baseline_metrics


def test_map_topk_ids_unknown_and_missing_become_minus_one():
    today = np.array(["10", "20", "30"], dtype=object)
    ids = np.array([["30", "99", "10"], [None, "20", ""]], dtype=object)
    np.testing.assert_array_equal(map_topk_ids(ids, today), [[2, -1, 0], [-1, 1, -1]])
    # ids given as ints are compared as strings (the contract's id type)
    np.testing.assert_array_equal(map_topk_ids(np.array([[20, 10]]), today), [[1, 0]])


def test_map_topk_ids_rejects_bad_input():
    with pytest.raises(ValueError, match="topk_item_ids"):
        map_topk_ids(np.array(["1", "2"]), ["1"])
    with pytest.raises(ValueError, match="duplicate"):
        map_topk_ids(np.array([["1"]]), ["1", "1"])


def test_evaluate_recommender_by_hand():
    # popularity ranks items 0 > 1 > 2 > ...; user 0 has seen item 0 and holds out item 1
    # -> its list starts [1, 2, ...]: hit at rank 1 -> nDCG 1, recall 1
    pop = Popularity.from_counts(np.arange(120, 0, -1))
    fold_in = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 120))
    holdout = sp.csr_matrix(([1.0], ([0], [1])), shape=(1, 120))
    got = evaluate_recommender(pop, fold_in, holdout, pop.counts)
    assert set(got) == set(METRIC_KEYS)
    assert got["ndcg@100"] == pytest.approx(1.0) and got["recall@20"] == pytest.approx(1.0)
    assert got["coverage@100"] == pytest.approx(100 / 120)
    with pytest.raises(ValueError, match="n must"):
        evaluate_recommender(pop, fold_in, holdout, pop.counts, n=20)
    metrics, per_user = evaluate_recommender_per_user(pop, fold_in, holdout, pop.counts)
    assert metrics == pytest.approx(got, nan_ok=True, rel=0, abs=0)
    assert {k: v.tolist() for k, v in per_user.items()} == {
        "ndcg@100": [1.0],
        "recall@20": [1.0],
        "recall@50": [1.0],
    }


def test_baseline_metrics_ease_beats_popularity_on_block_data():
    X, _ = checkerboard()
    features = Features.from_matrix(X, n_heldout_users=12, seed=0)
    got = baseline_metrics(features, grid=(1.0, 10.0))
    tried = got["ease"]["validation_ndcg@100"]
    assert {"1.0", "10.0"} <= set(tried)  # plus up to two steps past an edge optimum
    assert str(got["ease"]["lambda"]) in tried
    assert got["ease"]["users"] == got["popularity"]["users"] == features.test.n_users
    assert got["ease"]["ndcg@100"] > got["popularity"]["ndcg@100"]
