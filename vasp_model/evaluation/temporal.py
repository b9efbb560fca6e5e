"""The temporal protocol beside vae_cf: is the next period in the lists made before it?

The model learns the events before the cutoff ``D - h``; the users seen before it are scored
from their history (fold-in, filtered from the lists) against their new positives in
``(D - h, D]`` (:attr:`vasp_model.data.features.Features.temporal`). The figures are vae_cf's
(Recall@20/50, nDCG@100, ...) plus ``hit_rate@20`` (share of users with a next-period item in
their top 20) and ``new_item_share`` (share of next-period items the vocabulary does not know:
no model can recommend them, so they bound every figure from above).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vasp_model.evaluation.metrics import evaluate_topk_per_user, hit_matrix

HIT_RATE_K = 20
SECTION = "temporal"  # the metrics report's key: MLflow metrics temporal.<model>.<metric>


def hit_rate(topk_idx, holdout_csr, k: int = HIT_RATE_K) -> float:
    """Share of users (with a non-empty holdout) who have a held-out item in their top ``k``."""
    has_holdout = np.diff(holdout_csr.indptr) > 0
    if not has_holdout.any():
        return float("nan")
    hits = hit_matrix(np.asarray(topk_idx)[:, :k], holdout_csr).any(axis=1)
    return float(hits[has_holdout].mean())


def evaluate_temporal(
    recommenders: Mapping[str, tuple[Any, int]], features, n: int = 100
) -> dict[str, dict[str, float]]:
    """``{model: metrics}`` of each ``name -> (recommender, items it models)`` on ``features.temporal``;
    ``{}`` when the features have no temporal holdout."""
    split = features.temporal
    if split is None or split.n_users == 0:
        return {}
    share = features.temporal_new_items / features.temporal_next_items if features.temporal_next_items else 0.0
    out = {}
    for name, (rec, n_items) in recommenders.items():
        idx, _ = rec.recommend(split.fold_in[:, :n_items], n, filter_seen=True)
        metrics, _ = evaluate_topk_per_user(idx, split.holdout, features.popularity)
        out[name] = {**metrics, f"hit_rate@{HIT_RATE_K}": hit_rate(idx, split.holdout), "new_item_share": share}
    return out
