"""Scoring a recommender on held-out users, and re-scoring lists from another vocabulary.

* :func:`evaluate_recommender`: ``recommend(fold_in, n)`` (fold-in items filtered) -> :func:`evaluate_topk`;
  :func:`evaluate_recommender_per_user` also returns the per-user arrays behind the figures (one scoring pass).
* :func:`map_topk_ids`: item-id lists from any model (e.g. the registry's champion, trained on an
  older vocabulary) -> item indices in today's vocabulary, ``-1`` for ids unknown today, so the
  champion and the candidate are compared on exactly the same users and holdout.
"""

from __future__ import annotations

import numpy as np

from vasp_model.evaluation.metrics import ModelMetrics, PerUser, evaluate_topk_per_user


def evaluate_recommender(rec, fold_in, holdout, popularity, n: int = 100) -> ModelMetrics:
    """Top-``n`` of ``rec.recommend(fold_in, n, filter_seen=True)`` scored against ``holdout``.

    ``fold_in``/``holdout`` are ``[U, I]`` sparse matrices in the recommender's vocabulary,
    ``popularity`` the per-item training counts (for the head/mid/tail buckets). ``n`` must be
    >= 100 for the @100 figures to be meaningful.
    """
    return evaluate_recommender_per_user(rec, fold_in, holdout, popularity, n)[0]


def evaluate_recommender_per_user(rec, fold_in, holdout, popularity, n: int = 100) -> tuple[ModelMetrics, PerUser]:
    """:func:`evaluate_recommender`'s metrics and the per-user accuracy arrays they average (row order of ``holdout``)."""
    if n < 100:
        raise ValueError(f"n must be >= 100 (nDCG@100 and coverage@100 are reported), got {n}")
    idx, _ = rec.recommend(fold_in, n, filter_seen=True)
    return evaluate_topk_per_user(idx, holdout, popularity)


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
