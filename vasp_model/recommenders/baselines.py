"""Baselines every run is scored against: closed-form EASE and popularity.

Both expose the same batched ``recommend(user_items, n, filter_seen=True) -> (item_idx, scores)``
as the VASP bundle: ``user_items`` is a sparse ``[U, I]`` matrix in the model's vocabulary,
the result is ``item_idx`` ``[U, n]`` int64 (best first) and ``scores`` ``[U, n]`` float32.
When fewer than ``n`` items are available (``n`` > catalog, or seen items filtered out) the
remaining slots hold item ``-1`` with score ``-inf``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from vasp_model.evaluation.metrics import ndcg_at_k, topk_from_scores
from vasp_model.evaluation.protocol import evaluate_recommender
from vasp_model.recommenders.spd_inverse import NotPositiveDefinite, invert_spd_in_place

log = logging.getLogger(__name__)

DEFAULT_EASE_GRID = (100.0, 300.0, 1000.0, 3000.0)
GRAM_CHUNK_USERS = 16_384  # users per sparse XᵀX product when the Gram matrix is built
# How the λ search solves EASE: float64 keeps one Gram matrix and solves each λ in a float64 copy;
# float32 rebuilds the Gram matrix for each λ and solves it in place (two I×I float32 arrays at
# most: the current and the best solution), for catalogs too wide for the float64 solve.
EASE_PRECISIONS = ("float64", "float32")
_BATCH_USERS = 2048


def _check_fit_matrix(X, name: str = "X") -> sp.csr_matrix:
    if not sp.issparse(X):
        if not isinstance(X, np.ndarray):
            raise ValueError(f"{name} must be a scipy sparse matrix or a numpy array, got {type(X).__name__}")
        X = sp.csr_matrix(X)
    X = sp.csr_matrix(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [users, items] matrix, got shape {X.shape}")
    if np.isnan(X.data).any():
        raise ValueError(f"{name} contains NaN values; clean the interaction matrix before fitting")
    if not np.isfinite(X.data).all():
        raise ValueError(f"{name} contains infinite values; clean the interaction matrix before fitting")
    return X


def gram_chunk_entries(X) -> int:
    """An upper bound on the entries of one sparse XᵀX chunk that :meth:`EASE.gram` builds: per chunk of
    users the sum of their squared item counts, at most I²; the largest over the chunks."""
    X = sp.csr_matrix(X)
    per_user = np.diff(X.indptr).astype(np.int64) ** 2
    sums = np.add.reduceat(per_user, np.arange(0, max(per_user.size, 1), GRAM_CHUNK_USERS)) if per_user.size else [0]
    return int(min(max(sums), X.shape[1] ** 2))


def check_recommend_args(user_items, n, n_items: int) -> sp.csr_matrix:
    """Validate ``recommend`` arguments (shared by every recommender); returns ``user_items`` as CSR."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not sp.issparse(user_items):
        if isinstance(user_items, np.ndarray) and user_items.ndim == 2:
            user_items = sp.csr_matrix(user_items)
        else:
            raise ValueError(
                f"user_items must be a 2-D scipy sparse matrix [users, items], got {type(user_items).__name__}"
            )
    if user_items.ndim != 2 or user_items.shape[1] != n_items:
        raise ValueError(f"user_items has shape {user_items.shape}; expected [users, {n_items}] (the model's items)")
    csr = sp.csr_matrix(user_items)
    if csr.nnz and np.isnan(csr.data).any():
        raise ValueError("user_items contains NaN values")
    return csr


def recommend_batched(
    rank_fn,
    user_items: sp.csr_matrix,
    n: int,
    filter_seen: bool,
    batch_users: int = _BATCH_USERS,
    exclude: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``rank_fn(rows, mask, n)`` (the top-``n`` ``(item_idx, scores)`` of a batch, ``mask``'s items left
    out) for ``batch_users`` users at a time.

    Masked: ``exclude``'s items when it is given, else the input rows' items when ``filter_seen``.
    """
    n_users = user_items.shape[0]
    out_idx = np.full((n_users, n), -1, dtype=np.int64)
    out_scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    for start in range(0, n_users, batch_users):
        rows = user_items[start : start + batch_users]
        mask = exclude[start : start + batch_users] if exclude is not None else rows if filter_seen else None
        idx, vals = rank_fn(rows, mask, n)
        out_idx[start : start + rows.shape[0]] = idx
        out_scores[start : start + rows.shape[0]] = vals
    return out_idx, out_scores


def ranked_scores(score_fn, threads: int = 1):
    """A ``rank_fn`` for :func:`recommend_batched`: the top of ``score_fn(rows)``'s dense ``[rows, I]``
    scores, ranked over ``threads`` threads."""
    return lambda rows, mask, n: topk_from_scores(score_fn(rows), mask, n, return_scores=True, threads=threads)


class EASE:
    """Closed-form EASE (Steck 2019): B = -P / diag(P), diag(B) = 0, P = (XᵀX + λI)⁻¹.

    The Gram matrix and its inverse are computed in float64 (one Cholesky solve); B is kept
    as float32. Memory is O(I²): fine up to a few tens of thousands of items.
    """

    def __init__(self, lambda_: float = 500.0):
        if isinstance(lambda_, bool) or not isinstance(lambda_, int | float | np.number) or not lambda_ > 0:
            raise ValueError(f"lambda_ must be a positive number, got {lambda_!r}")
        self.lambda_ = float(lambda_)
        self.B: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return self.B.shape[0]

    def _check_fitted(self) -> None:
        if self.B is None:
            raise RuntimeError("EASE is not fitted; call fit(X) first")

    @staticmethod
    def gram(X, dtype=np.float64) -> np.ndarray:
        """XᵀX as a dense ``dtype`` array (reusable across λ via :meth:`fit_gram`)."""
        X = _check_fit_matrix(X)
        n_items = X.shape[1]
        G = np.zeros((n_items, n_items), dtype=dtype)
        # Sparse products over large user chunks (bounds the sparse I×I intermediate on big inputs).
        for start in range(0, X.shape[0], GRAM_CHUNK_USERS):
            rows = X[start : start + GRAM_CHUNK_USERS]
            product = (rows.T @ rows).tocoo()  # from a CSR product: (row, col) pairs are unique
            G[product.row, product.col] += product.data.astype(dtype, copy=False)
        return G

    def fit(self, X) -> EASE:
        """Fit on a ``[users, items]`` implicit-feedback matrix (values used as given)."""
        return self.fit_gram(self.gram(X))

    def fit_gram(self, G: np.ndarray, overwrite: bool = False) -> EASE:
        """Fit from a precomputed Gram matrix XᵀX.

        By default ``G`` is not modified: the solve works in one float64 copy, so the peak is
        ``G`` + that copy + the float32 B. With ``overwrite=True`` a contiguous float32 ``G`` is
        factored, inverted and turned into B in place: one I×I array in all, the way a catalog too
        wide for the float64 solve still fits (a float64 ``G`` is solved in place too, then B is its
        float32 copy). Any other ``G`` with ``overwrite=True`` is refused rather than copied.
        """
        G = np.asarray(G)
        if G.ndim != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"G must be a square Gram matrix, got shape {G.shape}")
        if not np.isfinite(G.sum(dtype=np.float64)):  # a sum, not an I×I mask: no extra I² bytes
            raise ValueError("G contains NaN or infinite values")
        if overwrite:
            if G.dtype not in (np.float32, np.float64) or not (G.flags.c_contiguous or G.flags.f_contiguous):
                raise ValueError(f"overwrite=True needs a contiguous float32/float64 G, got {G.dtype}")
            # LAPACK works on Fortran order; a symmetric C-ordered G is the same matrix as its transpose.
            A = G if G.flags.f_contiguous else G.T
        else:
            A = np.array(G, dtype=np.float64, order="F", copy=True)
        A[np.diag_indices_from(A)] += self.lambda_
        invert_spd_in_place(A)
        # B in C order, as scoring reads it (row i: what item i adds to every score); P is symmetric, so
        # A's C-ordered transpose is P in C order, with no copy. (SciPy's CSR x dense product copies an
        # F-ordered B whole on every call.)
        P = A.T
        P /= -np.diag(P).copy()  # B_ij = -P_ij / P_jj
        P[np.diag_indices_from(P)] = 0.0
        self.B = P if P.dtype == np.float32 else P.astype(np.float32)
        return self

    def scores(self, user_items) -> np.ndarray:
        """Dense scores ``user_items @ B`` ``[U, I]`` (no masking)."""
        self._check_fitted()
        user_items = check_recommend_args(user_items, 1, self.n_items)
        return np.asarray(user_items.astype(np.float32) @ self.B)

    def recommend(self, user_items, n: int, filter_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        user_items = check_recommend_args(user_items, n, self.n_items)
        return recommend_batched(
            ranked_scores(lambda rows: np.asarray(rows.astype(np.float32) @ self.B)), user_items, int(n), filter_seen
        )


def prune_rows(B: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest-magnitude weights of each row of the square ``B`` (each source item keeps its
    ``k`` strongest target items, never itself), as ``[I, k]`` arrays of column indices (int32) and
    float32 weights: O(I·k) memory instead of I², built row block by row block."""
    n = B.shape[0]
    if B.ndim != 2 or B.shape[1] != n:
        raise ValueError(f"B must be square, got shape {B.shape}")
    if not 0 < k < n:
        raise ValueError(f"k must be a number of neighbours in [1, {n - 1}], got {k!r}")
    k = int(k)
    targets = np.empty((n, k), dtype=np.int32)
    values = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        part = np.asarray(B[start : start + block])
        strength = np.abs(part)
        rows = np.arange(part.shape[0])
        strength[rows, rows + start] = -1.0  # the diagonal ranks last: an item never targets itself
        top = np.argpartition(-strength, k - 1, axis=1)[:, :k]
        targets[start : start + part.shape[0]] = top
        values[start : start + part.shape[0]] = np.take_along_axis(part, top, axis=1)
    return targets, values


def pruned_matrix(B: np.ndarray, k: int, block: int = 1024) -> sp.csr_matrix:
    """``B`` with only the ``k`` largest-magnitude weights of each row (:func:`prune_rows`; ``k`` past
    the catalog keeps every off-diagonal weight), as CSR float32."""
    n = B.shape[0]
    targets, values = prune_rows(B, min(int(k), n - 1), block)
    indptr = np.arange(0, targets.size + 1, targets.shape[1], dtype=np.int64)
    out = sp.csr_matrix((values.ravel(), targets.ravel(), indptr), shape=(n, n))
    out.sort_indices()
    out.eliminate_zeros()
    return out


class PrunedEASE:
    """EASE scored through a pruned item-item matrix (:func:`pruned_matrix`): ``x @ B_k`` as a sparse
    product, the memory-bounded stand-in for the dense ``B`` on wide catalogs."""

    def __init__(self, B_k: sp.csr_matrix):
        self.B = sp.csr_matrix(B_k, dtype=np.float32)
        if self.B.shape[0] != self.B.shape[1]:
            raise ValueError(f"B_k must be square, got shape {self.B.shape}")

    @property
    def n_items(self) -> int:
        return self.B.shape[0]

    def recommend(self, user_items, n: int, filter_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        user_items = check_recommend_args(user_items, n, self.n_items)
        B = self.B
        return recommend_batched(
            ranked_scores(lambda rows: (rows.astype(np.float32) @ B).toarray()), user_items, int(n), filter_seen
        )


class Popularity:
    """Most-popular items (number of distinct users with the item), same list for everyone."""

    def __init__(self):
        self.counts: np.ndarray | None = None

    @classmethod
    def from_counts(cls, popularity) -> Popularity:
        counts = np.asarray(popularity, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"popularity must be a non-empty 1-D array, got shape {counts.shape}")
        if np.isnan(counts).any():
            raise ValueError("popularity contains NaN values")
        rec = cls()
        rec.counts = counts.astype(np.float32)
        return rec

    @property
    def n_items(self) -> int:
        if self.counts is None:
            raise RuntimeError("Popularity is not fitted; call fit(X) first")
        return self.counts.size

    def fit(self, X) -> Popularity:
        X = _check_fit_matrix(X)
        X.eliminate_zeros()
        self.counts = np.diff(X.tocsc().indptr).astype(np.float32)
        return self

    def recommend(self, user_items, n: int, filter_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        user_items = check_recommend_args(user_items, n, self.n_items)
        counts = self.counts
        return recommend_batched(
            ranked_scores(lambda rows: np.broadcast_to(counts, (rows.shape[0], counts.size))),
            user_items,
            int(n),
            filter_seen,
        )


def fit_ease(X, lambda_: float, precision: str = "float64") -> EASE:
    """EASE with ``lambda_`` on ``X``, solved in ``precision`` (one of :data:`EASE_PRECISIONS`;
    float32: the Gram matrix built in float32 and solved in place)."""
    if precision not in EASE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EASE_PRECISIONS)}, got {precision!r}")
    if precision == "float64":
        return EASE(lambda_).fit(X)
    return EASE(lambda_).fit_gram(EASE.gram(X, np.float32), overwrite=True)


def fit_ease_on_validation(
    train_csr,
    val_fold_in,
    val_holdout,
    grid: Sequence[float] = DEFAULT_EASE_GRID,
    k: int = 100,
    max_expand: int = 2,
    precision: str = "float64",
    keep_factors: Sequence[float] = (),
) -> tuple[EASE, dict[float, float], dict[float, EASE]]:
    """Choose EASE's λ on validation nDCG@k: a walk over ``grid`` (sorted) from its middle.

    The two middle λ are solved first; from the better one the search steps through the grid toward
    it while validation improves, and past the grid's edge by factors of 3 (at most ``max_expand``
    extra fits), so a data set whose optimum is outside the default grid (sparse catalogs such as
    Last.fm or CiteULike want a smaller λ than MovieLens) still gets an interior optimum. On the
    single-peaked curves λ gives, the walk finds the grid's best while solving only the λ on its way
    (each solve is O(I³)). ``precision``: one of :data:`EASE_PRECISIONS`. The λ the walk stopped at (the
    last one solved, which lost) is kept when it is the best λ times one of ``keep_factors``, so that a
    caller wanting that λ too need not solve it again. Returns ``(best_model, {λ: validation nDCG@k} in
    the order solved, {factor: kept model})``.
    """
    grid = sorted({float(g) for g in grid})
    if not grid:
        raise ValueError("grid must hold at least one λ")
    if max_expand < 0:
        raise ValueError(f"max_expand must be >= 0, got {max_expand}")
    if precision not in EASE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EASE_PRECISIONS)}, got {precision!r}")
    n_items = sp.csr_matrix(train_csr).shape[1]
    if sp.csr_matrix(val_fold_in).shape[1] != n_items:
        raise ValueError(f"val_fold_in has {val_fold_in.shape[1]} items, train_csr has {n_items}")
    if precision == "float64":
        G = EASE.gram(train_csr)

        def fit(lam: float) -> EASE:
            return EASE(lam).fit_gram(G)
    else:

        def fit(lam: float) -> EASE:
            return fit_ease(train_csr, lam, precision)

    results: dict[float, float] = {}
    best: EASE | None = None
    loser: EASE | None = None  # the last λ solved, when it lost (dropped before the next solve: one I×I less)

    def improves(lam: float) -> bool:
        """Solve ``lam``; whether it beats every λ solved before (a float32 breakdown loses)."""
        nonlocal best, loser
        loser = None
        try:
            model = fit(lam)
        except NotPositiveDefinite as error:  # a float32 factor can break down at a small λ: it loses
            log.warning("EASE λ search: λ=%g skipped (%s)", lam, error)
            results[lam] = float("nan")
            return best is None  # nothing solved yet: keep walking (toward larger λ)
        idx, _ = model.recommend(val_fold_in, k)
        results[lam] = float(np.nanmean(ndcg_at_k(idx, val_holdout, k)))
        log.info("EASE λ search: λ=%g, validation nDCG@%d %.4f", lam, k, results[lam])
        if best is not None and not results[lam] > results[best.lambda_]:
            loser = model
            return False
        best = model
        return True

    middle = (len(grid) - 1) // 2
    for lam in grid[middle : middle + 2]:
        improves(lam)
    lower, upper = results[grid[middle]], results[grid[min(middle + 1, len(grid) - 1)]]
    # toward the better of the two; on a tie toward the smaller λ (the one kept), never toward a breakdown
    step = 1 if upper > lower or np.isnan(lower) else -1
    at, extra = (middle if step < 0 else middle + 1), (max_expand if len(grid) > 1 else 0)
    while True:
        at += step
        if not 0 <= at < len(grid):  # past the grid's edge
            if not extra:
                break
            extra -= 1
            if at < 0:
                grid.insert(0, grid[0] / 3.0)
                at = 0
            else:
                grid.append(grid[-1] * 3.0)
        if not improves(grid[at]):
            break
    if best is None:
        raise NotPositiveDefinite(f"no λ of {sorted(results)} could be solved in {precision}")
    kept = {
        factor: loser
        for factor in keep_factors
        if loser is not None and math.isclose(loser.lambda_, best.lambda_ * factor, rel_tol=1e-9)
    }
    return best, results, kept


def baseline_metrics(
    features, grid: Sequence[float] | None = None, n: int = 100, split: str = "test", precision: str = "float64"
) -> dict[str, dict[str, Any]]:
    """EASE (λ chosen on validation nDCG@100 over ``grid``) and popularity, scored on ``split`` users.

    Returns ``{"ease": {metrics..., "lambda": λ, "validation_ndcg@100": {λ: v}, "fit_seconds": s},
    "popularity": {metrics...}}``.
    """
    target = getattr(features, split)
    start = time.perf_counter()
    ease, by_lambda, _ = fit_ease_on_validation(
        features.train,
        features.validation.fold_in,
        features.validation.holdout,
        grid=DEFAULT_EASE_GRID if grid is None else grid,
        precision=precision,
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
