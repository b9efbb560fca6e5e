"""Scoring a recommender on held-out users, and re-scoring lists from another vocabulary.

* :func:`evaluate_recommender`: ``recommend(fold_in, n)`` (fold-in items filtered) -> :func:`evaluate_topk`.
* :func:`map_topk_ids`: item-id lists from any model (e.g. the registry's champion, trained on an
  older vocabulary) -> item indices in today's vocabulary, ``-1`` for ids unknown today, so the
  champion and the candidate are compared on exactly the same users and holdout.
* :func:`baseline_metrics`: EASE (λ tuned on validation) and popularity on a :class:`Features`' test users.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vasp_model.evaluation.metrics import evaluate_topk


def evaluate_recommender(rec, fold_in, holdout, popularity, n: int = 100) -> dict[str, float]:
    """Top-``n`` of ``rec.recommend(fold_in, n, filter_seen=True)`` scored against ``holdout``.

    ``fold_in``/``holdout`` are ``[U, I]`` sparse matrices in the recommender's vocabulary,
    ``popularity`` the per-item training counts (for the head/mid/tail buckets). ``n`` must be
    >= 100 for the @100 figures to be meaningful.
    """
    if n < 100:
        raise ValueError(f"n must be >= 100 (nDCG@100 and coverage@100 are reported), got {n}")
    idx, _ = rec.recommend(fold_in, n, filter_seen=True)
    return evaluate_topk(idx, holdout, popularity)


def map_topk_ids(topk_item_ids, item_ids_today) -> np.ndarray:
    """Map a ``[U, n]`` array of item ids to today's item indices; unknown ids (and None/"") -> -1.

    ``item_ids_today`` is today's vocabulary in item_idx order (``Features.item_ids``). Ids are
    compared as strings, the data contract's id type.
    """
    ids = np.asarray(topk_item_ids, dtype=object)
    if ids.ndim != 2:
        raise ValueError(f"topk_item_ids must be 2-D [users, n], got shape {ids.shape}")
    vocab = np.asarray(item_ids_today, dtype=object).astype(str)
    if vocab.ndim != 1:
        raise ValueError(f"item_ids_today must be 1-D, got shape {vocab.shape}")
    order = np.argsort(vocab, kind="stable")
    sorted_vocab = vocab[order]
    if sorted_vocab.size > 1 and np.any(sorted_vocab[1:] == sorted_vocab[:-1]):
        raise ValueError("item_ids_today holds duplicate ids")
    missing = np.array([x is None or (isinstance(x, float) and np.isnan(x)) for x in ids.ravel()], dtype=bool)
    flat = np.where(missing, "", ids.ravel()).astype(str)
    out = np.full(flat.shape, -1, dtype=np.int64)
    if sorted_vocab.size:
        pos = np.minimum(np.searchsorted(sorted_vocab, flat), sorted_vocab.size - 1)
        found = (sorted_vocab[pos] == flat) & ~missing
        out[found] = order[pos[found]]
    return out.reshape(ids.shape)


def baseline_metrics(
    features, grid: Sequence[float] | None = None, n: int = 100, split: str = "test"
) -> dict[str, dict[str, Any]]:
    """EASE (λ chosen on validation nDCG@100 over ``grid``) and popularity, scored on ``split`` users.

    Returns ``{"ease": {metrics..., "lambda": λ, "validation_ndcg@100": {λ: v}, "fit_seconds": s},
    "popularity": {metrics...}}``.
    """
    from vasp_model.recommenders.baselines import DEFAULT_EASE_GRID, Popularity, fit_ease_on_validation

    target = getattr(features, split)
    start = time.perf_counter()
    ease, by_lambda = fit_ease_on_validation(
        features.train,
        features.validation.fold_in,
        features.validation.holdout,
        grid=DEFAULT_EASE_GRID if grid is None else grid,
    )
    seconds = time.perf_counter() - start
    ease_metrics = evaluate_recommender(ease, target.fold_in, target.holdout, features.popularity, n)
    ease_metrics.update(
        {
            "lambda": ease.lambda_,
            "validation_ndcg@100": {str(k): v for k, v in by_lambda.items()},
            "fit_seconds": seconds,
        }
    )
    pop = Popularity.from_counts(features.popularity)
    return {
        "ease": ease_metrics,
        "popularity": evaluate_recommender(pop, target.fold_in, target.holdout, features.popularity, n),
    }
