"""The paired bootstrap over per-user metric arrays (vasp_model.evaluation.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from vasp_model.evaluation.bootstrap import (
    PairedDifference,
    paired_bootstrap,
    pool,
    resample_blocks,
)


def _pair(users: int, shift: float, noise: float, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    b = {"ndcg@100": rng.random(users), "recall@20": rng.random(users)}
    a = {m: v + shift + rng.normal(0, noise, users) for m, v in b.items()}
    return a, b


def _resample_indices(users: int, resamples: int, seed: int) -> np.ndarray:
    """Every resample at once: the ``[resamples, users]`` matrix the blocks are rows of."""
    return np.concatenate(list(resample_blocks(users, resamples, seed)))


def test_known_difference_is_covered_and_the_figures_are_the_paired_means():
    a, b = _pair(600, 0.02, 0.1, seed=1)
    out = paired_bootstrap(a, b)
    assert set(out) == {"ndcg@100", "recall@20"}
    for m, d in out.items():
        assert d.low < 0.02 < d.high and d.low < d.diff < d.high
        assert d.diff == pytest.approx(np.mean(a[m] - b[m]), rel=1e-12)
        assert d.relative == pytest.approx(d.diff / np.mean(b[m]), rel=1e-12)
        assert (d.users, d.resamples, d.seed, d.confidence) == (600, 2000, 0, 0.95)
        assert d.high - d.low < 0.03  # the interval of a mean over 600 users, not of single users


def test_interval_covers_the_true_difference_about_as_often_as_it_says():
    hits = 0
    for rep in range(200):
        a, b = _pair(150, 0.05, 0.2, seed=100 + rep)
        d = paired_bootstrap(a, b, resamples=1000, seed=rep)["ndcg@100"]
        hits += d.low < 0.05 < d.high
    assert 0.88 <= hits / 200 <= 0.99


def test_identical_arrays_give_exactly_zero():
    a, _ = _pair(50, 0.0, 0.1, seed=2)
    for d in paired_bootstrap(a, {m: v.copy() for m, v in a.items()}).values():
        assert (d.diff, d.low, d.high, d.relative) == (0.0, 0.0, 0.0, 0.0)


def test_seeded_and_reproducible():
    a, b = _pair(80, 0.01, 0.1, seed=3)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    seven, eight = paired_bootstrap(a, b, seed=7)["ndcg@100"], paired_bootstrap(a, b, seed=8)["ndcg@100"]
    assert (seven.low, seven.high) != (eight.low, eight.high) and seven.diff == eight.diff
    np.testing.assert_array_equal(_resample_indices(5, 3, seed=1), _resample_indices(5, 3, seed=1))


def test_nan_users_are_dropped_from_both_sides():
    a = {"ndcg@100": np.array([0.5, np.nan, 0.25, 1.0]), "recall@20": np.array([1.0, np.nan, 0.5, 0.0])}
    b = {"ndcg@100": np.array([0.25, 0.5, np.nan, 0.5]), "recall@20": np.array([0.5, 1.0, np.nan, 0.5])}
    out = paired_bootstrap(a, b, resamples=500)
    assert out["ndcg@100"].users == out["recall@20"].users == 2  # users 0 and 3
    assert out["ndcg@100"].diff == pytest.approx(((0.5 - 0.25) + (1.0 - 0.5)) / 2)
    assert out["recall@20"].diff == pytest.approx(((1.0 - 0.5) + (0.0 - 0.5)) / 2)
    assert out["ndcg@100"].relative == pytest.approx(0.375 / 0.375)
    assert all(np.isfinite([d.low, d.high]).all() for d in out.values())
    empty = paired_bootstrap({"ndcg@100": np.array([np.nan])}, {"ndcg@100": np.array([0.5])})["ndcg@100"]
    assert empty.users == 0 and np.isnan([empty.diff, empty.low, empty.high]).all()


def test_vectorized_equals_a_slow_loop():
    a, b = _pair(40, 0.01, 0.3, seed=4)
    out = paired_bootstrap(a, b, resamples=300, seed=5, confidence=0.9)
    idx = _resample_indices(40, 300, seed=5)
    for m, d in out.items():
        diffs = a[m] - b[m]
        means = np.array([diffs[row].mean() for row in idx])
        low, high = np.percentile(means, [5, 95])
        assert (d.low, d.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
        assert d.confidence == 0.9


def test_resamples_drawn_in_blocks_are_the_same_resamples():
    """Blocks of rows come from one seeded stream: the whole matrix, and every interval, whatever the block."""
    whole = np.random.default_rng(3).integers(0, 37, size=(50, 37))
    for max_entries in (1, 37, 100, 37 * 50, 10**9):
        blocks = list(resample_blocks(37, 50, seed=3, max_entries=max_entries))
        assert max(b.shape[0] for b in blocks) == max(1, min(50, max_entries // 37))
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
    a, b = _pair(37, 0.01, 0.3, seed=6)
    at_once = paired_bootstrap(a, b, resamples=50, seed=3, max_entries=10**9)
    for max_entries in (100, 1):  # the same means, summed in another order by the matrix product
        for m, d in paired_bootstrap(a, b, resamples=50, seed=3, max_entries=max_entries).items():
            assert (d.diff, d.users) == (at_once[m].diff, at_once[m].users)
            assert (d.low, d.high) == (
                pytest.approx(at_once[m].low, rel=1e-12),
                pytest.approx(at_once[m].high, rel=1e-12),
            )


def test_to_dict_and_pool():
    d = PairedDifference(0.01, -0.002, 0.02, 0.05, 10, 2000, 0)
    assert d.to_dict() == {
        "diff": 0.01,
        "low": -0.002,
        "high": 0.02,
        "relative": 0.05,
        "users": 10,
        "resamples": 2000,
        "seed": 0,
        "confidence": 0.95,
    }
    runs = [{"ndcg@100": np.array([0.1, 0.2])}, {"ndcg@100": np.array([0.3])}]
    np.testing.assert_array_equal(pool(runs)["ndcg@100"], [0.1, 0.2, 0.3])
    a1, b1 = _pair(30, 0.0, 0.1, seed=6)
    a2, b2 = _pair(20, 0.0, 0.1, seed=7)
    assert paired_bootstrap(pool([a1, a2]), pool([b1, b2]))["ndcg@100"].users == 50
    with pytest.raises(ValueError, match="every run must hold the same metrics"):
        pool([{"ndcg@100": [0.1]}, {"recall@20": [0.1]}])
    with pytest.raises(ValueError, match="at least one run"):
        pool([])


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        ({"x": [0.1]}, {"y": [0.1]}, {}, "same metrics"),
        ({"x": [0.1, 0.2]}, {"x": [0.1]}, {}, "one length per pair"),
        ({"x": [0.1]}, {"x": [0.1]}, {"resamples": 0}, "resamples must be a positive integer"),
        ({"x": [0.1]}, {"x": [0.1]}, {"confidence": 1.0}, "confidence must be in"),
    ],
)
def test_bad_input_is_a_clear_error(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap({k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in b.items()}, **kwargs)
