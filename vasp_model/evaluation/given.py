"""The given split beside vae_cf: train and test files as provided (LightGCN's protocol).

Every user of the test file is scored from all of its training positives (fold-in, filtered from
the lists) against the file's items (:attr:`vasp_model.data.features.Features.given`). The figures
at ``K`` = 20 follow LightGCN's definitions, so they compare with the tables published on the same
split: ``recall`` = hits in the top K / the user's test items (those outside the vocabulary count
as misses), ``ndcg`` = DCG of the top K over the ideal DCG of min(test items, K) hits, ``precision``
= hits / K, each averaged over the users. vae_cf's figures on the same lists ride along.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vasp_model.evaluation.metrics import evaluate_topk_per_user, hit_matrix

K = 20
SECTION = "given"  # the metrics report's key: MLflow metrics given.<model>.<metric>
LIGHTGCN_KEYS = (f"lightgcn_recall@{K}", f"lightgcn_ndcg@{K}", f"lightgcn_precision@{K}")


def lightgcn_metrics(topk_idx, holdout_csr, test_items, k: int = K) -> dict[str, np.ndarray]:
    """Per-user recall, nDCG and precision @``k`` by LightGCN's definitions (:data:`LIGHTGCN_KEYS`
    at k = 20); ``test_items`` [U] counts each user's test items, known to the vocabulary or not."""
    test_items = np.asarray(test_items, dtype=np.float64)
    if test_items.shape != (holdout_csr.shape[0],) or (test_items < 1).any():
        raise ValueError("test_items must give every user's test items (at least one each)")
    if (np.diff(holdout_csr.indptr) > test_items).any():
        raise ValueError("a user holds out more items than its test_items count")
    hits = hit_matrix(np.asarray(topk_idx)[:, :k], holdout_csr).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(test_items, k).astype(np.int64) - 1]
    return {
        f"lightgcn_recall@{k}": hits.sum(axis=1) / test_items,
        f"lightgcn_ndcg@{k}": (hits * discount[: hits.shape[1]]).sum(axis=1) / ideal,
        f"lightgcn_precision@{k}": hits.sum(axis=1) / k,
    }


def evaluate_given(recommenders: Mapping[str, tuple[Any, int]], features, n: int = 100) -> dict[str, dict[str, float]]:
    """``{model: metrics}`` of each ``name -> (recommender, items it models)`` on ``features.given``:
    LightGCN's figures @20 plus vae_cf's; ``{}`` when the features have no given split."""
    return evaluate_given_per_user(recommenders, features, n)[0]


def evaluate_given_per_user(
    recommenders: Mapping[str, tuple[Any, int]], features, n: int = 100
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """:func:`evaluate_given`'s figures and, by model, the per-user arrays they average (vae_cf's
    accuracy and LightGCN's @20, one row per user of the given split, the same users for every model)."""
    split = features.given
    if split is None or split.n_users == 0:
        return {}, {}
    out, per_user = {}, {}
    for name, (rec, n_items) in recommenders.items():
        idx, _ = rec.recommend(split.fold_in[:, :n_items], n, filter_seen=True)
        metrics, accuracy = evaluate_topk_per_user(idx, split.holdout, features.popularity)
        paper = lightgcn_metrics(idx, split.holdout, features.given_test_items)
        out[name] = {**metrics, **{key: float(v.mean()) for key, v in paper.items()}, "lightgcn_users": split.n_users}
        per_user[name] = {**accuracy, **paper}
    return out, per_user
