"""Paired bootstrap intervals of the difference between two models scored on the same users.

The inputs are per-user metric arrays (:data:`vasp_model.evaluation.metrics.PerUser`): row ``u`` of
every array of ``a`` and of ``b`` is the same user. A resample draws users with replacement; one
seeded ``[resamples, users]`` index matrix serves every metric (drawn a block of rows at a time), and the
resampled means come from matrix products of the resample counts with the per-user differences. A user whose value is NaN in
any metric of ``a`` or ``b`` (an empty holdout) is dropped before resampling, so the point
difference is the difference of the averages :func:`~vasp_model.evaluation.metrics.evaluate_topk`
reports. :func:`pool` concatenates the arrays of several runs (e.g. the test users of several
splits) so that one interval covers all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
CHUNK_ENTRIES = 2**22  # resampled user indices drawn and counted at once: a few 32 MiB arrays


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a − b`` over the paired users, its percentile interval, and how it was drawn."""

    diff: float  # mean over users of a − b
    low: float  # lower end of the percentile interval of the mean difference
    high: float
    relative: float  # diff / mean of b (NaN when that mean is 0)
    users: int  # users with a value in both a and b
    resamples: int
    seed: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def resample_blocks(users: int, resamples: int = RESAMPLES, seed: int = SEED, max_entries: int = CHUNK_ENTRIES):
    """The rows of the ``[resamples, users]`` matrix of user indices drawn with replacement, from one seeded
    stream, a block of at most ``max_entries`` indices (at least one row) at a time, so that a long test set's
    resamples are never all held at once."""
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) or resamples <= 0:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    rng, rows = np.random.default_rng(seed), max(1, max_entries // max(users, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, users, size=(min(rows, resamples - start), users))


def paired_bootstrap(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    max_entries: int = CHUNK_ENTRIES,
) -> dict[str, PairedDifference]:
    """``{metric: PairedDifference of a − b}`` for every metric of ``a`` (``b`` must have the same ones); the
    resamples are drawn and counted ``max_entries`` user indices at a time (:func:`resample_blocks`).

    With no user left (all NaN) every figure is NaN and ``users`` is 0.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if set(a) != set(b) or not a:
        raise ValueError(f"a and b must hold the same metrics, got {sorted(a)} and {sorted(b)}")
    names = list(a)
    left = np.stack([np.asarray(a[m], dtype=np.float64) for m in names])
    right = np.stack([np.asarray(b[m], dtype=np.float64) for m in names])
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(f"per-user arrays must be 1-D and of one length per pair, got {left.shape} and {right.shape}")
    keep = ~(np.isnan(left) | np.isnan(right)).any(axis=0)
    left, right = left[:, keep], right[:, keep]
    users = int(keep.sum())
    if users == 0:
        nan = float("nan")
        return {m: PairedDifference(nan, nan, nan, nan, 0, resamples, seed, confidence) for m in names}
    diffs = left - right  # [M, U]
    blocks = []
    for idx in resample_blocks(users, resamples, seed, max_entries):
        rows = idx.shape[0]
        counts = np.bincount((idx + users * np.arange(rows)[:, None]).ravel(), minlength=rows * users)
        blocks.append(counts.reshape(rows, users).astype(np.float64) @ diffs.T / users)
    means = np.concatenate(blocks)  # [B, M]
    tail = (1 - confidence) / 2 * 100
    lows, highs = np.percentile(means, [tail, 100 - tail], axis=0)
    out = {}
    for j, m in enumerate(names):
        diff, base = float(diffs[j].mean()), float(right[j].mean())
        relative = diff / base if base != 0 else float("nan")
        out[m] = PairedDifference(diff, float(lows[j]), float(highs[j]), relative, users, resamples, seed, confidence)
    return out


def pool(runs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The per-user arrays of several runs concatenated per metric, in run order (every run: the same metrics)."""
    if not runs:
        raise ValueError("pool needs at least one run")
    names = set(runs[0])
    for run in runs[1:]:
        if set(run) != names:
            raise ValueError(f"every run must hold the same metrics, got {sorted(names)} and {sorted(run)}")
    return {m: np.concatenate([np.asarray(run[m], dtype=np.float64).ravel() for run in runs]) for m in runs[0]}


def intervals_against(per_model: Mapping[str, Mapping[str, np.ndarray]], reference: str = "vasp") -> dict[str, dict]:
    """``{"vasp-ease": {metric: PairedDifference.to_dict()}, "vasp-popularity": ...}``: ``reference`` minus each
    other model of ``per_model`` (``{model: per-user arrays}``, the same users)."""
    return {
        f"{reference}-{name}": {m: d.to_dict() for m, d in paired_bootstrap(per_model[reference], arrays).items()}
        for name, arrays in per_model.items()
        if name != reference
    }
