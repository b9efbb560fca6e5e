"""VASP blended with closed-form EASE, the weights chosen on validation users.

A user's blended score of item ``i`` is ``(1 − w) · z(log p_i) + w · z(s_i)``: ``p`` VASP's
probabilities, ``s = x B`` EASE's scores of the same input row, ``z`` standardizes a row over the
catalog (mean 0, standard deviation 1) so that both scales meet. The weight ``w`` may grow with the
user's number of input items (:class:`BlendWeights`): the network leads on users with few items, and
EASE's linear item-item model holds up best on users with many. ``w = 0`` is VASP alone, and a training
keeps the blend only when validation prefers a positive weight for some users.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from vasp_model.core.column_tiles import ColumnTiles
from vasp_model.core.numba_launch import numba_launch
from vasp_model.recommenders.host_ease import HostEASE, ranked_in_one_pass

WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # the validation grid of each weight; 0 = VASP alone
# the item counts of the training users at these percentiles bound the light and the heavy users
ACTIVITY_PERCENTILES = (10, 90)
FILE = "ease_blend.npy"  # B, beside the bundle's model when the blend is on
SPARSE_FILE = "ease_blend.npz"  # B pruned like a pruned Neural EASE kernel (CSR), in its place


@dataclasses.dataclass(frozen=True)
class BlendWeights:
    """EASE's weight in the blend by the user's number of input items ``n``: ``light`` up to ``light_items``,
    ``heavy`` from ``heavy_items`` on, linear in ``log n`` in between. ``light == heavy``: one weight for all."""

    light: float
    heavy: float
    light_items: float = 1.0
    heavy_items: float = 1.0

    def __post_init__(self) -> None:
        for name in ("light", "heavy"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"blend weight must be in [0, 1), got {name}={getattr(self, name)!r}")
        if not 1.0 <= self.light_items <= self.heavy_items:
            raise ValueError(
                f"blend item counts must satisfy 1 <= light_items <= heavy_items, got {self.light_items!r} and "
                f"{self.heavy_items!r}"
            )

    @classmethod
    def from_train_counts(cls, light: float, heavy: float, train_counts: np.ndarray) -> BlendWeights:
        """Weights whose light and heavy users are bounded by the training users' item counts
        (:data:`ACTIVITY_PERCENTILES`)."""
        low, high = np.percentile(np.maximum(train_counts, 1), ACTIVITY_PERCENTILES) if len(train_counts) else (1, 1)
        return cls(float(light), float(heavy), float(low), float(high))

    @property
    def off(self) -> bool:
        """True when every user gets VASP alone."""
        return self.light == self.heavy == 0.0

    def of_rows(self, seen: sp.csr_matrix) -> np.ndarray:
        """Each row's weight from its number of input items."""
        if self.light == self.heavy:
            return np.full(seen.shape[0], self.light)
        n = np.maximum(np.diff(seen.indptr), 1)
        if self.heavy_items > self.light_items:
            t = np.clip(np.log(n / self.light_items) / np.log(self.heavy_items / self.light_items), 0.0, 1.0)
        else:
            t = (n >= self.heavy_items).astype(np.float64)
        return self.light + (self.heavy - self.light) * t

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> BlendWeights:
        return cls(**{f.name: float(values[f.name]) for f in dataclasses.fields(cls) if f.name in values})


class EaseBlend:
    """EASE's item-item matrix ``B`` (I × I float32, or pruned CSR; zero diagonal) and the blend's weights (a
    :class:`BlendWeights`, or one weight in (0, 1) for every user); ``x B`` is computed on the host over
    ``threads`` threads."""

    def __init__(self, weights: BlendWeights | float, B, threads: int = 1):
        if not isinstance(weights, BlendWeights):
            weights = BlendWeights(float(weights), float(weights))
        if weights.off:
            raise ValueError(f"blend weight must be in (0, 1) for some users, got {weights}")
        self.weights = weights
        self.ease = HostEASE(B, threads)

    @property
    def B(self):
        return self.ease.kernel

    def save(self, directory: str) -> None:
        """Write ``B`` into ``directory`` (:data:`FILE`, or :data:`SPARSE_FILE` when pruned)."""
        self.ease.save(os.path.join(directory, FILE if self.ease.sparse is None else SPARSE_FILE))

    @classmethod
    def load(cls, directory: str, weights: BlendWeights | float, threads: int = 1) -> EaseBlend:
        """The blend :meth:`save` wrote into ``directory``, at ``weights``."""
        pruned = os.path.join(directory, SPARSE_FILE)
        if os.path.exists(pruned):
            return cls(weights, sp.load_npz(pruned), threads)
        return cls(weights, ColumnTiles.load_npy(os.path.join(directory, FILE)), threads)

    def __call__(self, probabilities: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
        """Blended ``[rows, I]`` scores from VASP's ``probabilities`` of the 0/1 input rows ``seen``."""
        return blended(probabilities, self.ease(seen), self.weights.of_rows(seen), self.ease.threads)

    def top(
        self, logits: list[np.ndarray], seen: sp.csr_matrix, mask: sp.csr_matrix | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` ``(item_idx, scores)`` of the blend, from the logits of VASP's paths (whose sigmoids'
        product is its probabilities) for the 0/1 input rows ``seen``, ``mask``'s items left out."""
        return top_blended(logits, self.ease(seen), self.weights.of_rows(seen), mask, k, self.ease.threads)


def _row_weights(weight, n_rows: int) -> np.ndarray:
    """``weight`` (one for every row, or one per row) as a C-ordered float64 array of ``n_rows``."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_rows,)))


def blended(probabilities: np.ndarray, ease_scores: np.ndarray, weight, threads: int = 1) -> np.ndarray:
    """``(1 − weight) · z(log probabilities) + weight · z(ease_scores)`` per row (float32 ``[rows, I]``; ``z``
    standardizes a row, probabilities below 1e-30 count as 1e-30; ``weight`` one for all rows or one per row),
    rows shared out over ``threads``."""
    from vasp_model.recommenders.blend_kernel import blended_kernel

    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    ease_scores = np.ascontiguousarray(ease_scores, dtype=np.float32)
    if probabilities.ndim != 2 or ease_scores.shape != probabilities.shape:
        raise ValueError(
            f"probabilities {probabilities.shape} and EASE scores {ease_scores.shape} must be one 2-D shape"
        )
    out = np.empty(probabilities.shape, dtype=np.float32)
    with numba_launch(threads):
        blended_kernel(probabilities, ease_scores, _row_weights(weight, probabilities.shape[0]), out)
    return out


def top_blended(
    logits: list[np.ndarray],
    ease_scores: np.ndarray,
    weight,
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
    weights = _row_weights(weight, ease_scores.shape[0])
    return ranked_in_one_pass(top_blended_kernel, logits, mask, k, threads, ease_scores, weights)


def blended_ndcg(
    probabilities: np.ndarray,
    ease_scores: np.ndarray,
    weights: np.ndarray,
    mask: sp.csr_matrix,
    holdout: sp.csr_matrix,
    k: int = 100,
    threads: int = 1,
) -> np.ndarray:
    """``[options, rows]`` nDCG@k of each row's blend at each option's weights (``weights``: ``[options, rows]``):
    ``ndcg_at_k(topk_from_scores(blended(probabilities, ease_scores, w), mask, k), holdout, k)`` for each ``w``
    of ``weights``, without a ``[rows, I]`` array per option (each row blended, ranked and scored while it is in
    cache). The holdout may be wider than the catalog scored: its items beyond it count as missed."""
    from vasp_model.recommenders.blend_kernel import blended_ndcg_kernel

    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    ease_scores = np.ascontiguousarray(ease_scores, dtype=np.float32)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    shape = probabilities.shape
    if probabilities.ndim != 2 or ease_scores.shape != shape or mask.shape != shape or holdout.shape[0] != shape[0]:
        raise ValueError(
            f"probabilities {shape}, EASE scores {ease_scores.shape} and mask {mask.shape} must be one 2-D shape, "
            f"the holdout {holdout.shape} as many rows (its items beyond the catalog are never ranked)"
        )
    if weights.ndim != 2 or weights.shape[1] != shape[0]:
        raise ValueError(f"weights must be [options, {shape[0]}], got {weights.shape}")
    mask, holdout = sp.csr_matrix(mask), sp.csr_matrix(holdout).sorted_indices()
    out = np.empty(weights.shape, dtype=np.float64)
    with numba_launch(threads):
        blended_ndcg_kernel(
            probabilities,
            ease_scores,
            weights,
            *(a.astype(np.int64, copy=False) for a in (mask.indptr, mask.indices, holdout.indptr, holdout.indices)),
            int(k),
            out,
        )
    return out


def choose_weights(
    probabilities: Callable[[sp.csr_matrix], np.ndarray],
    B,
    fold_in: sp.csr_matrix,
    holdout: sp.csr_matrix,
    train_counts: np.ndarray,
    weights: Sequence[float] = WEIGHTS,
    k: int = 100,
) -> tuple[BlendWeights, dict[tuple[float, float], float]]:
    """The :class:`BlendWeights` (light and heavy users' weights from ``weights``, bounded by the training users'
    item counts ``train_counts``) with the best mean nDCG@k on these (validation) users, and every pair's.

    ``probabilities(fold_in)`` gives VASP's ``[U, I]`` probabilities. Ties go to one weight for all users, then
    to the smaller weights.
    """
    choice = choose_blend(probabilities, [B], fold_in, holdout, train_counts, weights, k)
    return choice.weights, choice.grids[0]


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """The network at other epochs than the served one, to choose the blend apart from the epoch: the blend's
    options are scored on each user at the epoch the other users would have chosen (:func:`halvings`).

    ``probabilities(epoch)`` gives VASP's ``[U, I]`` probabilities of the validation users at a (0-based) epoch of
    ``assignments`` (``(epoch, users)`` pairs); ``served_epoch``'s are the served model's own."""

    probabilities: Callable[[int], np.ndarray]
    assignments: list[tuple[int, np.ndarray]]
    served_epoch: int

    @property
    def epochs(self) -> dict[int, int]:
        """How many halves chose each epoch, by epoch."""
        counts: dict[int, int] = {}
        for epoch, _ in self.assignments:
            counts[epoch] = counts.get(epoch, 0) + 1
        return dict(sorted(counts.items()))


def halvings(ndcg: np.ndarray, epochs: Sequence[int], n: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """``n`` random halvings of the users (seeded), each both ways: one half's users with the epoch (of ``epochs``,
    0-based; ties to the earlier) whose mean of ``ndcg`` (``[epochs, users]``, the network's per-user validation
    nDCG) is best on the other half. Every halving assigns every user once."""
    rng = np.random.default_rng(seed)
    epochs = np.asarray(sorted(epochs))
    curves = ndcg[epochs]
    out = []
    for _ in range(n):
        halves = np.array_split(rng.permutation(ndcg.shape[1]), 2)
        for choose_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
            means = user_means(curves[:, choose_on])
            out.append((int(epochs[int(np.argmax(means))]), np.sort(score_on)))
    return out


def user_means(per_user: np.ndarray) -> np.ndarray:
    """The mean over the users (the last axis) of per-user figures, NaN (no holdout, an unknown epoch) left out;
    ``-inf`` where no user has one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row's mean of nothing
        return np.nan_to_num(np.nanmean(per_user, axis=-1), nan=-np.inf)


@dataclasses.dataclass(frozen=True)
class BlendChoice:
    """What :func:`choose_blend` chose: the EASE matrix's index and the weights, each matrix's grid of mean nDCG@k
    on all users at the served epoch and, cross-fitted, the grids that chose (else None); ``pairs_gain``: the mean
    and standard error of the per-user gain of the best light/heavy pair over the best one weight for all users
    (None where one weight was best)."""

    index: int
    weights: BlendWeights
    grids: list[dict[tuple[float, float], float]]
    cross_fitted: list[dict[tuple[float, float], float]] | None = None
    pairs_gain: tuple[float, float] | None = None

    @property
    def deciding(self) -> list[dict[tuple[float, float], float]]:
        """The grids the choice was made on."""
        return self.grids if self.cross_fitted is None else self.cross_fitted


def choose_blend(
    probabilities: Callable[[sp.csr_matrix], np.ndarray],
    candidates: Sequence,
    fold_in: sp.csr_matrix,
    holdout: sp.csr_matrix,
    train_counts: np.ndarray,
    weights: Sequence[float] = WEIGHTS,
    k: int = 100,
    cross_fit: CrossFit | None = None,
    threads: int = 1,
) -> BlendChoice:
    """:func:`choose_weights` over several EASE matrices (``candidates``, e.g. EASE at several λ), VASP's
    probabilities computed once: the index of the matrix whose best weights score highest (ties go to the
    first), those weights, and each matrix's grid.

    With ``cross_fit`` the options are compared on their cross-fitted means (each user scored at the epoch the
    other half of the users chose, averaged over the halvings) rather than at the served epoch, whose best is
    optimistic on the very users that chose it. A light/heavy pair is chosen over the best one weight for all
    users only when its per-user gain is more than one standard error above zero. The options are scored over
    ``threads`` threads.
    """
    if not candidates:
        raise ValueError("choose_blend needs at least one EASE matrix")
    fold_in = sp.csr_matrix(fold_in, dtype=np.float32)
    vasp = probabilities(fold_in)
    grid = sorted({float(x) for x in weights})
    bounds = BlendWeights.from_train_counts(0.0, 0.0, train_counts)  # the light and heavy item counts, once
    pairs = list(itertools.product(grid, grid))
    rows = [dataclasses.replace(bounds, light=light, heavy=heavy).of_rows(fold_in) for light, heavy in pairs]

    rows = np.stack(rows)

    def per_user(network: np.ndarray, ease: np.ndarray) -> np.ndarray:  # [pairs, users] nDCG@k
        return blended_ndcg(network, ease, rows, fold_in, holdout, k, threads)

    served, deciding = [], []  # per candidate, [pairs, users]
    for B in candidates:
        ease = fold_in @ (B.astype(np.float32) if sp.issparse(B) else np.asarray(B, dtype=np.float32))
        ease = ease.toarray() if sp.issparse(ease) else np.asarray(ease)
        served.append(per_user(vasp, ease))
        if cross_fit is None:
            continue
        total = np.zeros_like(served[-1])
        for epoch in cross_fit.epochs:
            at_epoch = served[-1] if epoch == cross_fit.served_epoch else per_user(cross_fit.probabilities(epoch), ease)
            for _, users in (a for a in cross_fit.assignments if a[0] == epoch):
                total[:, users] += at_epoch[:, users]
        deciding.append(total / max(1, len(cross_fit.assignments) // 2))  # each halving scores every user once
    deciding = deciding or served
    index, pair, gain = _best_option(deciding, pairs)
    light, heavy = pairs[pair]
    return BlendChoice(
        index,
        dataclasses.replace(bounds, light=light, heavy=heavy),
        [_grid(pairs, values) for values in served],
        None if cross_fit is None else [_grid(pairs, values) for values in deciding],
        gain,
    )


def _grid(pairs: list[tuple[float, float]], per_user: np.ndarray) -> dict[tuple[float, float], float]:
    """Each pair's mean over the users (``per_user``: ``[pairs, users]``)."""
    return dict(zip(pairs, np.nanmean(per_user, axis=1).tolist(), strict=True))


def _best_option(
    per_user: list[np.ndarray], pairs: list[tuple[float, float]]
) -> tuple[int, int, tuple[float, float] | None]:
    """The (candidate, pair) served from the per-user figures (per candidate ``[pairs, users]``), and the best
    pair's gain over the best one weight (mean, standard error; None where one weight is best).

    Per candidate its best pair (ties go to one weight for all users, then to the smaller weights), then the
    candidate whose best is highest (ties go to the first); a pair of two weights only when its per-user gain over
    the best one weight is more than one standard error above zero (the one-standard-error rule)."""
    means = [np.nanmean(values, axis=1) for values in per_user]

    def best(allowed: list[int]) -> tuple[int, int]:
        top = [max(allowed, key=lambda j, m=m: (m[j], pairs[j][0] == pairs[j][1], -sum(pairs[j]))) for m in means]
        index = max(range(len(means)), key=lambda i: (means[i][top[i]], -i))
        return index, top[index]

    index, pair = best(list(range(len(pairs))))
    if pairs[pair][0] == pairs[pair][1]:
        return index, pair, None
    one_index, one = best([j for j, (light, heavy) in enumerate(pairs) if light == heavy])
    gain = per_user[index][pair] - per_user[one_index][one]
    gain = gain[~np.isnan(gain)]
    se = float(np.std(gain, ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    mean = float(np.mean(gain)) if len(gain) else 0.0
    return (index, pair, (mean, se)) if mean > se else (one_index, one, (mean, se))
