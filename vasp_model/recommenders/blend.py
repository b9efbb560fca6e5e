"""VASP blended with closed-form EASE, the weight chosen on validation users.

A user's blended score of item ``i`` is ``(1 − w) · z(log p_i) + w · z(s_i)``: ``p`` VASP's
probabilities, ``s = x B`` EASE's scores of the same input row, ``z`` standardizes a row over the
catalog (mean 0, standard deviation 1) so that both scales meet. ``w = 0`` is VASP alone, and a
training keeps the blend only when validation prefers a positive weight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from vasp_model.core.numba_launch import numba_launch
from vasp_model.evaluation.metrics import ndcg_at_k, topk_from_scores
from vasp_model.recommenders.host_ease import HostEASE, ranked_in_one_pass

WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # the validation grid; 0 = VASP alone
FILE = "ease_blend.npy"  # B, beside the bundle's model when the blend is on
SPARSE_FILE = "ease_blend.npz"  # B pruned like a pruned Neural EASE kernel (CSR), in its place


class EaseBlend:
    """EASE's item-item matrix ``B`` (I × I float32, or pruned CSR; zero diagonal) and the blend weight ``w``
    in (0, 1); ``x B`` is computed on the host over ``threads`` threads."""

    def __init__(self, weight: float, B, threads: int = 1):
        if not 0.0 < weight < 1.0:
            raise ValueError(f"blend weight must be in (0, 1), got {weight!r}")
        self.weight = float(weight)
        self.ease = HostEASE(B, threads)

    @property
    def B(self):
        return self.ease.kernel

    def save(self, directory: str) -> None:
        """Write ``B`` into ``directory`` (:data:`FILE`, or :data:`SPARSE_FILE` when pruned)."""
        self.ease.save(os.path.join(directory, FILE if self.ease.sparse is None else SPARSE_FILE))

    @classmethod
    def load(cls, directory: str, weight: float, threads: int = 1) -> EaseBlend:
        """The blend :meth:`save` wrote into ``directory``, at ``weight``."""
        pruned = os.path.join(directory, SPARSE_FILE)
        if os.path.exists(pruned):
            return cls(weight, sp.load_npz(pruned), threads)
        return cls(weight, np.load(os.path.join(directory, FILE), allow_pickle=False, mmap_mode="r"), threads)

    def __call__(self, probabilities: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
        """Blended ``[rows, I]`` scores from VASP's ``probabilities`` of the 0/1 input rows ``seen``."""
        return blended(probabilities, self.ease(seen), self.weight, self.ease.threads)

    def top(
        self, logits: list[np.ndarray], seen: sp.csr_matrix, mask: sp.csr_matrix | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` ``(item_idx, scores)`` of the blend, from the logits of VASP's paths (whose sigmoids'
        product is its probabilities) for the 0/1 input rows ``seen``, ``mask``'s items left out."""
        return top_blended(logits, self.ease(seen), self.weight, mask, k, self.ease.threads)


def blended(probabilities: np.ndarray, ease_scores: np.ndarray, weight: float, threads: int = 1) -> np.ndarray:
    """``(1 − weight) · z(log probabilities) + weight · z(ease_scores)`` per row (float32 ``[rows, I]``; ``z``
    standardizes a row, probabilities below 1e-30 count as 1e-30), rows shared out over ``threads``."""
    from vasp_model.recommenders.blend_kernel import blended_kernel

    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    ease_scores = np.ascontiguousarray(ease_scores, dtype=np.float32)
    if probabilities.ndim != 2 or ease_scores.shape != probabilities.shape:
        raise ValueError(
            f"probabilities {probabilities.shape} and EASE scores {ease_scores.shape} must be one 2-D shape"
        )
    out = np.empty(probabilities.shape, dtype=np.float32)
    with numba_launch(threads):
        blended_kernel(probabilities, ease_scores, float(weight), out)
    return out


def top_blended(
    logits: list[np.ndarray],
    ease_scores: np.ndarray,
    weight: float,
    mask: sp.csr_matrix | None,
    k: int,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``topk_from_scores(blended(sigmoid_product(logits), ease_scores, weight), mask, k, return_scores=True)``
    without the ``[rows, I]`` probabilities or blend: each row is multiplied, blended and ranked while it is in
    cache. Returns ``(item_idx, scores)``, ``[rows, k]``."""
    from vasp_model.recommenders.blend_kernel import top_blended_kernel

    ease_scores = np.ascontiguousarray(ease_scores, dtype=np.float32)
    shape = np.shape(logits[0]) if len(logits) else None
    if ease_scores.shape != shape:
        raise ValueError(f"EASE scores {ease_scores.shape} and logits {shape} must be one 2-D shape")
    return ranked_in_one_pass(top_blended_kernel, logits, mask, k, threads, ease_scores, float(weight))


def choose_weight(
    probabilities: Callable[[sp.csr_matrix], np.ndarray],
    B,
    fold_in: sp.csr_matrix,
    holdout: sp.csr_matrix,
    weights: Sequence[float] = WEIGHTS,
    k: int = 100,
) -> tuple[float, dict[float, float]]:
    """The weight of ``weights`` with the best mean nDCG@k on these (validation) users, and every weight's.

    ``probabilities(fold_in)`` gives VASP's ``[U, I]`` probabilities; ties go to the smaller weight.
    """
    fold_in = sp.csr_matrix(fold_in, dtype=np.float32)
    vasp = probabilities(fold_in)
    ease = fold_in @ (B.astype(np.float32) if sp.issparse(B) else np.asarray(B, dtype=np.float32))
    ease = ease.toarray() if sp.issparse(ease) else np.asarray(ease)
    results = {}
    for w in sorted({float(x) for x in weights}):
        topk = topk_from_scores(blended(vasp, ease, w), fold_in, k)
        results[w] = float(np.nanmean(ndcg_at_k(topk, holdout, k)))
    best = max(results, key=lambda w: (results[w], -w))
    return best, results
