"""Top-k ranking metrics, exactly as the vae_cf protocol (Liang et al. 2018), and their schema.

:data:`ModelMetrics` (keyed by :data:`METRIC_KEYS`) is one model's figures on one split;
:class:`MetricsReport` is what a training reports for every model and split (``metrics.json``).
Every consumer uses these names (``ndcg@100``...); only MLflow's metric keys spell them differently.

Conventions shared by every function here:

* ``topk_idx`` is an integer array ``[U, n]``: row ``u`` is user ``u``'s ranked list of item
  indices (rank 1 first) in today's vocabulary. ``-1`` marks a slot with no item (an item the
  model knows but today's vocabulary does not, or padding when fewer than ``n`` items were
  available); ``-1`` is never a hit and never counts towards coverage.
* ``holdout_csr`` is a ``[U, I]`` sparse matrix; any stored non-zero is a held-out positive.
* Recall@k = hits@k / min(k, |holdout|); nDCG@k = DCG@k / IDCG@k with gain 1/log2(rank + 1)
  and the ideal DCG over min(k, |holdout|) positions.
* Users with an empty holdout have no defined recall/nDCG: the per-user arrays hold NaN for
  them and the averages in :func:`evaluate_topk` skip them (``"users"`` counts who was averaged).
* A row is assumed not to repeat an item (every recommender here returns distinct items).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import scipy.sparse as sp

from vasp_model.core.row_blocks import for_row_blocks

# One model's metrics on one split, as :func:`evaluate_topk` returns them.
ModelMetrics = TypedDict(
    "ModelMetrics",
    {
        "ndcg@100": float,
        "recall@20": float,
        "recall@50": float,
        "coverage@100": float,
        "recall@20_head": float,
        "recall@20_mid": float,
        "recall@20_tail": float,
        "users": int,
    },
)
METRIC_KEYS: tuple[str, ...] = tuple(ModelMetrics.__annotations__)
ACCURACY_KEYS = ("ndcg@100", "recall@20", "recall@50")  # the headline figures: version tags, gate metric
BUCKETS = ("head", "mid", "tail")
MODELS = ("vasp", "ease", "popularity")  # the recommenders a training report scores
# ... and, beside them when VASP may be blended with EASE, the trained network alone (what the blend adds)
UNBLENDED = "vasp_alone"
# The evaluation protocols and the report section of each: vae_cf's test users, or the next period
# (``temporal``, :mod:`vasp_model.evaluation.temporal`).
PROTOCOL_SECTIONS = {"vae_cf": "test", "temporal": "temporal"}
SPLITS = ("test", "validation")
# Report sections a build may add beside vae_cf's: the next period, and a given test file
# (:mod:`vasp_model.evaluation.given`).
EXTRA_SECTIONS = ("temporal", "given")
# One model's per-user metric arrays on one split: ``{metric: [U] float array}`` (NaN: empty holdout).
PerUser = dict[str, np.ndarray]


class MetricsReport(TypedDict):
    """What a training reports (``metrics.json``): each split's metrics per model (of :data:`MODELS`).

    ``{"test": {"vasp": ModelMetrics, "ease": ..., "popularity": ...}, "validation": {...}}``; other
    top-level keys (best epoch, timings...) may ride along and are not part of the schema.
    """

    test: dict[str, ModelMetrics]
    validation: dict[str, ModelMetrics]


def model_test_metrics(report: Mapping[str, Any], model: str, section: str = "test") -> dict[str, float]:
    """``report[section][model]`` of a :class:`MetricsReport` (empty when that model or, for a section
    other than ``test``, that section was not scored)."""
    test = report.get("test") if isinstance(report, Mapping) else None
    if not isinstance(test, Mapping):
        raise ValueError("not a metrics report: expected {'test': {model: {metric: value}}, 'validation': {...}}")
    scores = report.get(section)
    return dict((scores or {}).get(model) or {}) if isinstance(scores, Mapping) else {}


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _as_csr(matrix, name: str) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise ValueError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr


def _check_topk(topk_idx, n_rows: int | None, n_items: int | None, name: str = "topk_idx") -> np.ndarray:
    topk = np.asarray(topk_idx)
    if topk.ndim != 2:
        raise ValueError(f"{name} must be 2-D [users, k], got shape {topk.shape}")
    if topk.size and not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"{name} must hold integer item indices, got dtype {topk.dtype}")
    topk = topk.astype(np.int64, copy=False)
    if n_rows is not None and topk.shape[0] != n_rows:
        raise ValueError(f"{name} has {topk.shape[0]} rows but the holdout matrix has {n_rows} users")
    if topk.size:
        if topk.min() < -1:
            raise IndexError(f"{name} holds {topk.min()}; item indices must be >= 0 (or -1 for unknown)")
        if n_items is not None and topk.max() >= n_items:
            raise IndexError(f"{name} holds item {topk.max()} but there are only {n_items} items")
    return topk


def hit_matrix(topk_idx, holdout_csr) -> np.ndarray:
    """Boolean ``[U, n]``: is ``topk_idx[u, j]`` in user ``u``'s holdout? (``-1`` never is)."""
    holdout = _as_csr(holdout_csr, "holdout_csr")
    n_users, n_items = holdout.shape
    topk = _check_topk(topk_idx, n_users, n_items)
    # Membership through sorted (user, item) keys: no densifying of the holdout matrix.
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(holdout.indptr))
    keys = np.sort(rows * n_items + holdout.indices.astype(np.int64))
    valid = topk >= 0
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + topk
    hits = np.zeros(topk.shape, dtype=bool)
    if keys.size:
        pos = np.searchsorted(keys, query[valid])
        pos = np.minimum(pos, keys.size - 1)
        hits[valid] = keys[pos] == query[valid]
    return hits


def _holdout_sizes(holdout_csr) -> np.ndarray:
    return np.diff(_as_csr(holdout_csr, "holdout_csr").indptr).astype(np.float64)


def recall_at_k(topk_idx, holdout_csr, k: int) -> np.ndarray:
    """Per-user Recall@k = hits in the first k / min(k, |holdout|); NaN for an empty holdout."""
    k = _check_k(k)
    hits = hit_matrix(topk_idx, holdout_csr)[:, :k].sum(axis=1)
    denom = np.minimum(k, _holdout_sizes(holdout_csr))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, hits / np.maximum(denom, 1), np.nan)


def ndcg_at_k(topk_idx, holdout_csr, k: int) -> np.ndarray:
    """Per-user nDCG@k with gain 1/log2(rank+1), ideal DCG over min(k, |holdout|); NaN for an empty holdout."""
    k = _check_k(k)
    hits = hit_matrix(topk_idx, holdout_csr)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    n_ideal = np.minimum(k, _holdout_sizes(holdout_csr)).astype(np.int64)
    idcg = ideal_cum[n_ideal]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_ideal > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def coverage(topk_idx, n_items: int) -> float:
    """Fraction of the ``n_items`` catalog that appears in at least one user's list (``-1`` ignored)."""
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items <= 0:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    topk = _check_topk(topk_idx, None, int(n_items))
    valid = topk[topk >= 0]
    return float(np.unique(valid).size / n_items)


def popularity_buckets(popularity) -> np.ndarray:
    """Bucket of every item: 0 = head, 1 = mid, 2 = tail, by equal thirds of the interaction mass.

    Items are sorted by popularity (descending, ties by index); walking down that list, an item
    whose *preceding* cumulative share of all interactions is < 1/3 is head, < 2/3 is mid, and
    the rest are tail. So the few blockbuster items that account for the first third of all
    training interactions are the head, and the long tail holding the last third is the tail
    (the "equal-popularity-mass" split used in popularity-bias studies). Zero popularity is tail.
    """
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise ValueError(f"popularity must be 1-D, got shape {pop.shape}")
    if pop.size and (not np.all(np.isfinite(pop)) or pop.min() < 0):
        raise ValueError("popularity must hold finite, non-negative counts")
    buckets = np.full(pop.shape, 2, dtype=np.int8)
    total = pop.sum()
    if total <= 0:
        return buckets
    order = np.argsort(-pop, kind="stable")
    before = (np.cumsum(pop[order]) - pop[order]) / total
    buckets[order] = np.where(before < 1 / 3, 0, np.where(before < 2 / 3, 1, 2))
    return buckets


def recall_by_popularity_bucket(topk_idx, holdout_csr, popularity, k: int = 20) -> dict[str, float]:
    """Mean Recall@k restricted to each popularity bucket (see :func:`popularity_buckets`).

    For bucket b and user u with holdout items H_b in b: hits = |top-k ∩ H_b|, recall =
    hits / min(k, |H_b|). The mean is over users with non-empty H_b (NaN if there are none).
    It answers "of the held-out tail items, how many did the model find?".
    """
    k = _check_k(k)
    holdout = _as_csr(holdout_csr, "holdout_csr")
    pop = np.asarray(popularity)
    if pop.shape != (holdout.shape[1],):
        raise ValueError(f"popularity has shape {pop.shape}, expected ({holdout.shape[1]},) (one count per item)")
    buckets = popularity_buckets(pop)
    topk = _check_topk(topk_idx, holdout.shape[0], holdout.shape[1])[:, :k]
    hits = hit_matrix(topk, holdout)
    topk_bucket = np.where(topk >= 0, buckets[np.maximum(topk, 0)], -1)
    holdout_bucket = buckets[holdout.indices]
    rows = np.repeat(np.arange(holdout.shape[0]), np.diff(holdout.indptr))
    out = {}
    for b, name in enumerate(BUCKETS):
        sizes = np.bincount(rows[holdout_bucket == b], minlength=holdout.shape[0]).astype(np.float64)
        bucket_hits = (hits & (topk_bucket == b)).sum(axis=1)
        users = sizes > 0
        out[name] = float(np.mean(bucket_hits[users] / np.minimum(k, sizes[users]))) if users.any() else float("nan")
    return out


def topk_from_scores(scores, fold_in_csr=None, k: int = 100, return_scores: bool = False, threads: int = 1):
    """Top-k item indices per row of a dense score matrix, best first, ties broken by lower item index.

    Items stored in ``fold_in_csr`` (the user's input/seen items; may be None) get score -inf
    and are never returned: slots that would hold a masked item (only when fewer than k
    items remain) are ``-1``, as are slots beyond the number of items. NaN ranks as -inf.
    ``scores`` is not modified; ``threads`` > 1 ranks blocks of rows in parallel. Returns ``topk_idx``
    [U, k] int64, or ``(topk_idx, topk_scores)`` if ``return_scores``.
    """
    k = _check_k(k)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    fold_in = None
    if fold_in_csr is not None:
        fold_in = _as_csr(fold_in_csr, "fold_in_csr")
        if fold_in.shape != scores.shape:
            raise ValueError(f"fold_in_csr has shape {fold_in.shape}, scores has {scores.shape}")
    idx = np.empty((scores.shape[0], k), dtype=np.int64)
    vals = np.empty((scores.shape[0], k), dtype=scores.dtype)

    def rank(start: int, end: int) -> None:
        idx[start:end], vals[start:end] = _topk_rows(
            scores[start:end], None if fold_in is None else fold_in[start:end], k
        )

    for_row_blocks(rank, scores.shape[0], threads, min_rows=_MIN_ROWS_PER_THREAD)
    return (idx, vals) if return_scores else idx


# Fewer rows than this per thread are ranked in one block (a thread's start costs more than they do).
_MIN_ROWS_PER_THREAD = 64


def _topk_rows(scores: np.ndarray, fold_in: sp.csr_matrix | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_from_scores` of one block of rows (``scores`` float, not modified): ``(idx, vals)``."""
    n_users, n_items = scores.shape
    scores = scores.copy()
    if fold_in is not None:
        rows = np.repeat(np.arange(n_users), np.diff(fold_in.indptr))
        scores[rows, fold_in.indices] = -np.inf
    scores[np.isnan(scores)] = -np.inf  # NaN would poison the ordering; treat it as "worst"
    kk = min(k, n_items)
    idx = _best_columns(scores, kk)
    vals = np.take_along_axis(scores, idx, axis=1)
    idx[np.isneginf(vals)] = -1
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return idx, vals


# A row's candidates are the columns reaching a threshold read from every _SAMPLE_STRIDE-th column.
_SAMPLE_STRIDE = 8


def _best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best columns of each row of ``scores`` (no NaN, ``k`` <= columns) as ``[rows, k]`` int64,
    best first, ties broken by lower column.

    Each row's threshold is a value that about ``2k`` of its columns reach, read from a strided sample of
    the row, and only the columns reaching it are sorted; a row where fewer than ``k`` (or far more)
    reach it, and every row of a matrix with few columns per ``k``, is sorted whole.
    """
    n_rows, n_cols = scores.shape
    out = np.empty((n_rows, k), dtype=np.int64)
    if k == 0 or n_rows == 0:
        return out
    whole = np.ones(n_rows, dtype=bool)
    if n_cols >= 16 * k:
        sample = scores[:, ::_SAMPLE_STRIDE]
        last = sample.shape[1] - 1 - min(sample.shape[1] - 1, 2 * k // _SAMPLE_STRIDE + 8)
        threshold = np.partition(sample, last, axis=1)[:, last]
        rows, cols = np.divmod(np.flatnonzero(scores >= threshold[:, None]), n_cols)  # by row, then column
        counts = np.bincount(rows, minlength=n_rows)
        whole = (counts < k) | (counts > 32 * k)
        if whole.any():
            keep = ~whole[rows]
            rows, cols, counts = rows[keep], cols[keep], np.where(whole, 0, counts)
        order = _by_row_best_first(rows, scores[rows, cols])
        starts = np.cumsum(counts) - counts
        sorted_rows = np.flatnonzero(~whole)
        out[sorted_rows] = cols[order][starts[sorted_rows, None] + np.arange(k)]
    if whole.any():
        out[whole] = np.argsort(-scores[whole], axis=1, kind="stable")[:, :k]
    return out


def _by_row_best_first(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The stable order of entries (``rows`` ascending) by row, then value descending."""
    if values.dtype != np.float32:
        return np.lexsort((-values, rows))
    bits = (values + np.float32(0)).view(np.uint32)  # -0.0 -> 0.0; as integers in the floats' order, reversed
    ascending = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return np.argsort((rows.astype(np.uint64) << np.uint64(32)) | (~ascending).astype(np.uint64), kind="stable")


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def per_user_accuracy(topk_idx, holdout_csr) -> PerUser:
    """Per-user values of the :data:`ACCURACY_KEYS` (``{metric: [U] float array}``, NaN for an empty holdout)."""
    holdout = _as_csr(holdout_csr, "holdout_csr")
    topk = _check_topk(topk_idx, holdout.shape[0], holdout.shape[1])
    return {
        "ndcg@100": ndcg_at_k(topk, holdout, 100),
        "recall@20": recall_at_k(topk, holdout, 20),
        "recall@50": recall_at_k(topk, holdout, 50),
    }


def evaluate_topk_per_user(topk_idx, holdout_csr, popularity) -> tuple[ModelMetrics, PerUser]:
    """:func:`evaluate_topk`'s metrics and the per-user arrays they average (:func:`per_user_accuracy`)."""
    holdout = _as_csr(holdout_csr, "holdout_csr")
    topk = _check_topk(topk_idx, holdout.shape[0], holdout.shape[1])
    per_user = per_user_accuracy(topk, holdout)
    out = {key: _nanmean(per_user[key]) for key in ACCURACY_KEYS}
    out["coverage@100"] = coverage(topk[:, :100], holdout.shape[1])
    for name, value in recall_by_popularity_bucket(topk, holdout, popularity, k=20).items():
        out[f"recall@20_{name}"] = value
    out["users"] = int((~np.isnan(per_user["ndcg@100"])).sum())
    return out, per_user


def evaluate_topk(topk_idx, holdout_csr, popularity) -> ModelMetrics:
    """All reported metrics of one ranked list per user (needs >= 100 columns for the @100 figures).

    Keys: ``ndcg@100``, ``recall@20``, ``recall@50``, ``coverage@100`` (catalog = holdout columns),
    ``recall@20_head/_mid/_tail`` and ``users`` (users with a non-empty holdout, averaged over).
    """
    return evaluate_topk_per_user(topk_idx, holdout_csr, popularity)[0]
