"""Ranking metrics against hand-worked examples and a literal re-implementation of dawenl/vae_cf."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from vasp_model.evaluation import metrics
from vasp_model.evaluation.metrics import (
    coverage,
    evaluate_topk,
    evaluate_topk_per_user,
    ndcg_at_k,
    per_user_accuracy,
    popularity_buckets,
    recall_at_k,
    recall_by_popularity_bucket,
    topk_from_scores,
)

L3, L5, L6 = 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(6)  # 0.63093, 0.43068, 0.38685


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


# user 0 holds out {1, 3}; user 1 holds out {0, 1, 2, 3, 4}; user 2 holds out nothing.
HOLDOUT = csr([[1, 3], [0, 1, 2, 3, 4], []], 6)
TOPK = np.array([[3, 0, 1, -1], [5, 0, -1, 4], [0, 1, 2, 3]])


def test_recall_by_hand():
    # k=3: user 0 hits ranks 1, 3 -> 2 / min(3, 2) = 1; user 1 hits rank 2 -> 1 / min(3, 5) = 1/3
    np.testing.assert_allclose(recall_at_k(TOPK, HOLDOUT, 3), [1.0, 1 / 3, np.nan])
    # k=4: user 1 hits ranks 2 and 4 (the -1 at rank 3 is never a hit) -> 2 / 4
    np.testing.assert_allclose(recall_at_k(TOPK, HOLDOUT, 4), [1.0, 0.5, np.nan])
    # k=10 > list length: denominators min(10, 2) = 2 and min(10, 5) = 5
    np.testing.assert_allclose(recall_at_k(TOPK, HOLDOUT, 10), [1.0, 0.4, np.nan])
    # k=1: user 0 rank 1 hit -> 1/1; user 1 miss -> 0
    np.testing.assert_allclose(recall_at_k(TOPK, HOLDOUT, 1), [1.0, 0.0, np.nan])


def test_ndcg_by_hand():
    # k=3, user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG over min(3, 2) = 2 positions = 1 + L3
    # k=3, user 1: DCG = 1/log2(3) = L3;              IDCG over 3 positions = 1 + L3 + 0.5
    expected3 = [1.5 / (1 + L3), L3 / (1.5 + L3), np.nan]  # 0.91972, 0.29609
    np.testing.assert_allclose(ndcg_at_k(TOPK, HOLDOUT, 3), expected3, rtol=1e-12)
    # k=4, user 1: DCG = L3 + 1/log2(5); IDCG = 1 + L3 + 0.5 + L5  -> 0.41443
    np.testing.assert_allclose(ndcg_at_k(TOPK, HOLDOUT, 4)[1], (L3 + L5) / (1.5 + L3 + L5), rtol=1e-12)
    # k=100 with 4 columns, user 1: IDCG over min(100, 5) = 5 positions adds 1/log2(6) -> 0.36005
    np.testing.assert_allclose(ndcg_at_k(TOPK, HOLDOUT, 100)[1], (L3 + L5) / (1.5 + L3 + L5 + L6), rtol=1e-12)
    assert ndcg_at_k(np.array([[1, 3]]), csr([[1, 3]], 6), 2)[0] == pytest.approx(1.0)


def test_unknown_item_is_never_a_hit():
    holdout = csr([[0]], 3)
    assert recall_at_k(np.array([[-1, 0]]), holdout, 1)[0] == 0.0
    assert ndcg_at_k(np.array([[-1, 0]]), holdout, 2)[0] == pytest.approx(L3)


def test_coverage_by_hand():
    # distinct valid items {0, 1, 2, 3, 4, 5} of a 10-item catalog; -1 ignored
    assert coverage(TOPK, 10) == pytest.approx(0.6)
    assert coverage(TOPK[:2, :2], 10) == pytest.approx(0.3)  # {3, 0, 5}
    assert coverage(np.full((2, 3), -1), 10) == 0.0


def test_popularity_buckets_by_hand():
    # total 100; share of interactions *before* each item (sorted desc): 0, .40, .60, .75, .85, .95
    # -> head (< 1/3), mid, mid (< 2/3), tail, tail, tail
    pop = np.array([10, 40, 5, 20, 10, 15])
    # sorted: item1(40) .0 head, item3(20) .40 mid, item5(15) .60 mid, item0(10) .75 tail,
    # item4(10) .85 tail, item2(5) .95 tail
    np.testing.assert_array_equal(popularity_buckets(pop), [2, 0, 2, 1, 2, 1])
    np.testing.assert_array_equal(popularity_buckets([0, 0]), [2, 2])


def test_recall_by_popularity_bucket_by_hand():
    pop = np.array([40, 20, 15, 10, 10, 5])  # buckets: 0 head, 1-2 mid, 3-5 tail
    # k=2. user 0: top-2 {3, 0}; holdout head {} (skipped), mid {1} -> 0/1, tail {3} -> 1/1
    #      user 1: top-2 {5, 0}; holdout head {0} -> 1/1, mid {1, 2} -> 0/2, tail {3, 4} -> 0/2
    #      user 2: empty holdout, skipped everywhere
    got = recall_by_popularity_bucket(TOPK, HOLDOUT, pop, k=2)
    assert got == pytest.approx({"head": 1.0, "mid": 0.0, "tail": 0.5})


def test_evaluate_topk_by_hand():
    topk = np.pad(TOPK, ((0, 0), (0, 96)), constant_values=-1)
    pop = np.array([40, 20, 15, 10, 10, 5])
    got = evaluate_topk(topk, HOLDOUT, pop)
    assert set(got) == set(metrics.METRIC_KEYS)
    ndcg1 = (L3 + L5) / (1.5 + L3 + L5 + L6)
    assert got["ndcg@100"] == pytest.approx((1.5 / (1 + L3) + ndcg1) / 2)  # 0.63989, user 2 skipped
    assert got["recall@20"] == pytest.approx((1.0 + 0.4) / 2)
    assert got["recall@50"] == pytest.approx((1.0 + 0.4) / 2)
    assert got["coverage@100"] == pytest.approx(1.0)
    assert got["users"] == 2
    # k=20: user 0 finds mid {1} and tail {3}; user 1 finds head {0}, tail {4} of {3, 4}, misses mid
    assert got["recall@20_head"] == pytest.approx(1.0)
    assert got["recall@20_mid"] == pytest.approx(0.5)
    assert got["recall@20_tail"] == pytest.approx((1.0 + 0.5) / 2)


def test_per_user_arrays_average_to_evaluate_topks_figures():
    rng = np.random.default_rng(3)
    dense = rng.random((40, 150)) < 0.06
    dense[::7] = False  # these users hold nothing out: NaN in every array, skipped by the averages
    holdout = sp.csr_matrix(dense)
    empty = holdout.getnnz(axis=1) == 0
    assert empty.sum() == 6
    topk = topk_from_scores(rng.random((40, 150)), None, 100)
    pop = rng.integers(0, 50, 150)
    got, per_user = evaluate_topk_per_user(topk, holdout, pop)
    assert got == evaluate_topk(topk, holdout, pop)
    assert set(per_user) == set(metrics.ACCURACY_KEYS)
    np.testing.assert_array_equal(per_user["ndcg@100"], ndcg_at_k(topk, holdout, 100))
    np.testing.assert_array_equal(per_user["recall@20"], recall_at_k(topk, holdout, 20))
    np.testing.assert_array_equal(per_user["recall@50"], recall_at_k(topk, holdout, 50))
    for key, values in per_user.items():
        assert values.shape == (40,) and np.isnan(values[empty]).all() and not np.isnan(values[~empty]).any()
        assert values[~empty].mean() == got[key]  # exactly the reported figure
    assert got["users"] == int((~empty).sum())
    for key, values in per_user_accuracy(topk, holdout).items():
        np.testing.assert_array_equal(values, per_user[key])


def test_topk_from_scores_masks_fold_in_and_pads():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.3, 0.25, 0.2, 0.8]])
    fold_in = csr([[1], []], 4)
    np.testing.assert_array_equal(topk_from_scores(scores, fold_in, 2), [[3, 2], [3, 0]])
    idx, vals = topk_from_scores(scores, fold_in, 5, return_scores=True)
    np.testing.assert_array_equal(idx, [[3, 2, 0, -1, -1], [3, 0, 1, 2, -1]])
    np.testing.assert_allclose(vals[0, :3], [0.7, 0.5, 0.1])
    assert np.all(np.isneginf(vals[0, 3:])) and np.isneginf(vals[1, 4])
    assert scores[0, 1] == 0.9  # input untouched
    np.testing.assert_array_equal(topk_from_scores(scores, None, 1), [[1], [3]])


def test_topk_from_scores_breaks_ties_by_item_index():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(topk_from_scores(scores, None, 4), [[1, 2, 3, 0]])


def _reference_topk(scores, fold_in, k):
    """Every row sorted whole: score descending, ties by lower index, masked and NaN items as -1."""
    masked = np.where(np.isnan(scores), -np.inf, scores)
    if fold_in is not None:
        masked[fold_in.toarray() > 0] = -np.inf
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    idx[np.isneginf(np.take_along_axis(masked, idx, axis=1))] = -1
    return np.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_items, k", [(3000, 100), (800, 20), (150, 100), (5000, 7)])
def test_topk_from_scores_equals_sorting_every_row_whole(n_items, k, dtype):
    """Wide rows take the sampled-threshold path: it must return exactly what sorting each whole row would,
    with coarse scores (many ties at the boundary), NaN, masks, and rows left with fewer than k items; in
    one block of rows or in several ranked by threads."""
    rng = np.random.default_rng(n_items + k)
    scores = np.round(rng.standard_normal((200, n_items)), 1).astype(dtype)  # about 80 distinct values
    scores[0, ::2] = 0.0
    scores[0, 1::2] = -0.0  # equal to 0.0: ties, broken by index
    scores[1] = 0.5  # one tie across the whole row
    scores[2, ::3] = np.nan
    scores[3] = np.linspace(0, 1, n_items)[::-1]  # the best items all at the front
    scores[4] = -np.inf
    scores[4, :3] = 1.0
    fold_in = sp.random(200, n_items, density=0.05, format="lil", random_state=1)
    fold_in[5, : n_items - 2] = 1.0  # all but two items seen
    scores[150, ::2] = np.nan  # and the same in the last thread's block
    fold_in[151, : n_items - 2] = 1.0
    fold_in = fold_in.tocsr()
    for mask in (None, fold_in):
        expected = _reference_topk(scores, mask, k)
        for threads in (1, 3):
            idx, vals = topk_from_scores(scores, mask, k, return_scores=True, threads=threads)
            np.testing.assert_array_equal(idx, expected)
            assert (vals[:, :-1] >= vals[:, 1:]).all()  # best first; -inf in the empty slots
            assert np.array_equal(vals[idx >= 0], np.take_along_axis(scores, np.maximum(idx, 0), 1)[idx >= 0])


@pytest.mark.parametrize(
    ("topk", "error", "match"),
    [
        (np.array([0, 1]), ValueError, "2-D"),
        (np.array([[0, 1]]), ValueError, "rows"),
        (np.array([[0, 9], [0, 1], [0, 1]]), IndexError, "item 9"),
        (np.array([[0, -2], [0, 1], [0, 1]]), IndexError, "-2"),
        (np.array([[0.0, 1.0], [0, 1], [0, 1]]), ValueError, "integer"),
    ],
)
def test_bad_topk_raises(topk, error, match):
    with pytest.raises(error, match=match):
        recall_at_k(topk, HOLDOUT, 2)


def test_bad_k_and_holdout_raise():
    with pytest.raises(ValueError, match="k must"):
        ndcg_at_k(TOPK, HOLDOUT, 0)
    with pytest.raises(ValueError, match="holdout_csr"):
        ndcg_at_k(TOPK, HOLDOUT.toarray(), 3)
    with pytest.raises(ValueError, match="popularity"):
        recall_by_popularity_bucket(TOPK, HOLDOUT, np.ones(5), k=2)


# --- literal port of dawenl/vae_cf's metric functions (bottleneck.argpartition -> numpy) ------------
def _vae_cf_ndcg(X_pred, heldout_batch, k=100):
    batch_users = X_pred.shape[0]
    idx_topk_part = np.argpartition(-X_pred, k, axis=1)
    topk_part = X_pred[np.arange(batch_users)[:, np.newaxis], idx_topk_part[:, :k]]
    idx_part = np.argsort(-topk_part, axis=1)
    idx_topk = idx_topk_part[np.arange(batch_users)[:, np.newaxis], idx_part]
    tp = 1.0 / np.log2(np.arange(2, k + 2))
    DCG = (heldout_batch[np.arange(batch_users)[:, np.newaxis], idx_topk].toarray() * tp).sum(axis=1)
    IDCG = np.array([(tp[: min(n, k)]).sum() for n in heldout_batch.getnnz(axis=1)])
    return DCG / IDCG


def _vae_cf_recall(X_pred, heldout_batch, k=100):
    batch_users = X_pred.shape[0]
    idx = np.argpartition(-X_pred, k, axis=1)
    X_pred_binary = np.zeros_like(X_pred, dtype=bool)
    X_pred_binary[np.arange(batch_users)[:, np.newaxis], idx[:, :k]] = True
    X_true_binary = (heldout_batch > 0).toarray()
    tmp = (np.logical_and(X_true_binary, X_pred_binary).sum(axis=1)).astype(np.float32)
    return tmp / np.minimum(k, X_true_binary.sum(axis=1))


def test_matches_vae_cf_reference_on_random_scores():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 300
    fold_in = sp.csr_matrix(rng.random((n_users, n_items)) < 0.1)
    holdout = sp.csr_matrix((rng.random((n_users, n_items)) < 0.05) & ~fold_in.toarray())
    keep = holdout.getnnz(axis=1) > 0
    fold_in, holdout = fold_in[keep], holdout[keep].astype(np.float64)
    scores = rng.random(fold_in.shape)
    masked = scores.copy()
    masked[fold_in.toarray()] = -np.inf  # vae_cf: X_pred[data_tr.nonzero()] = -np.inf
    topk = topk_from_scores(scores, fold_in, 100)
    np.testing.assert_allclose(ndcg_at_k(topk, holdout, 100), _vae_cf_ndcg(masked, holdout, 100), rtol=1e-10)
    for k in (20, 50):
        np.testing.assert_allclose(recall_at_k(topk, holdout, k), _vae_cf_recall(masked, holdout, k), rtol=1e-6)
