"""The temporal protocol's figures and the gate's choice of protocol (pure, no Spark, no MLflow server)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from vasp_model.data.features import EvalSplit, Features
from vasp_model.evaluation.metrics import model_test_metrics
from vasp_model.evaluation.temporal import evaluate_temporal, hit_rate
from vasp_model.mlops import gate
from vasp_model.mlops.tracking import TrackingConfig, from_mlflow_metrics, to_mlflow_metrics
from vasp_model.recommenders.baselines import Popularity


def _csr(rows, n_items):
    indptr = np.cumsum([0, *map(len, rows)])
    indices = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]) if rows else np.empty(0, np.int32)
    return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(rows), n_items))


def test_hit_rate_counts_users_with_a_next_period_item_in_their_top_k():
    topk = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    holdout = _csr([[2], [9], []], 10)  # user 0 hit, user 1 missed, user 2 has no holdout (not counted)
    assert hit_rate(topk, holdout, k=3) == 0.5
    assert hit_rate(topk, holdout, k=2) == 0.0


def test_evaluate_temporal_scores_popularity_on_the_next_period():
    features = Features.from_matrix(np.random.default_rng(0).random((60, 12)) < 0.5, n_heldout_users=5)
    n = features.n_items
    # the most popular item (index 0) is next for user 0; user 1's next item is the least popular one
    order = np.argsort(-features.popularity, kind="stable")
    split = EvalSplit(
        fold_in=_csr([[int(order[5])], [int(order[6])]], n),
        holdout=_csr([[int(order[0])], [int(order[-1])]], n),
        user_idx=np.array([0, 1], np.int32),
        user_ids=np.array(["0", "1"], dtype=object),
        consumed=_csr([[], []], n),
    )
    temporal = dataclasses.replace(features, temporal=split, temporal_new_items=1, temporal_next_items=3)
    pop = Popularity.from_counts(features.popularity)
    out = evaluate_temporal({"popularity": (pop, n)}, temporal)["popularity"]
    assert out["users"] == 2 and out["hit_rate@20"] == 1.0  # 12 items: everything is in the top 20
    assert out["ndcg@100"] < 1.0 and out["new_item_share"] == pytest.approx(1 / 3)
    assert evaluate_temporal({"popularity": (pop, n)}, features) == {}  # no temporal holdout: nothing


def test_temporal_metrics_round_trip_through_mlflow_keys_and_feed_the_gate():
    report = {
        "test": {"vasp": {"ndcg@100": 0.4}, "ease": {"ndcg@100": 0.41}},
        "validation": {},
        "temporal": {"vasp": {"ndcg@100": 0.2, "hit_rate@20": 0.5}, "ease": {"ndcg@100": 0.19}},
    }
    keys = to_mlflow_metrics(report)
    assert keys["temporal.vasp.ndcg_at_100"] == 0.2 and keys["temporal.vasp.hit_rate_at_20"] == 0.5
    back = from_mlflow_metrics(keys)
    assert model_test_metrics(back, "vasp", "temporal")["ndcg@100"] == 0.2
    assert model_test_metrics(back, "vasp")["ndcg@100"] == 0.4
    assert model_test_metrics({"test": {}}, "vasp", "temporal") == {}
    # the same logged figures pass the gate under temporal and fail it under vae_cf
    aliases, candidate = gate.Aliases(), gate.Version("vasp", "1", "run")
    passes = gate.decide("2024-01-01", gate.Rule(protocol="temporal"), candidate, aliases, gate.Logged(0.2, 0.19))
    fails = gate.decide("2024-01-01", gate.Rule(), candidate, aliases, gate.Logged(0.4, 0.41))
    assert passes.decision.promoted and not fails.decision.promoted
    assert gate.Rule(protocol="temporal").tag == "temporal ndcg@100 margin=0" and gate.Rule().tag == "ndcg@100 margin=0"


def test_gate_protocol_is_validated():
    assert TrackingConfig(tracking_uri="sqlite:///x.db").gate_protocol == "vae_cf"
    assert TrackingConfig(tracking_uri="sqlite:///x.db", gate_protocol="temporal").gate_protocol == "temporal"
    with pytest.raises(ValueError, match="gate_protocol must be one of vae_cf, temporal"):
        TrackingConfig(tracking_uri="sqlite:///x.db", gate_protocol="tomorrow")
