"""EASE and popularity: closed form checked by hand, the shared recommender contract, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import RecommenderContract, checkerboard

from vasp_model.data.features import Features
from vasp_model.recommenders.baselines import (
    EASE,
    Popularity,
    PrunedEASE,
    fit_ease_on_validation,
    prune_rows,
    pruned_matrix,
)
from vasp_model.recommenders.spd_inverse import NotPositiveDefinite, invert_spd_blocked, mirror_upper_in_place


class TestEASEContract(RecommenderContract):
    def make_recommender(self, train_csr):
        return EASE(lambda_=5.0).fit(train_csr)


class TestPrunedEASEContract(RecommenderContract):
    def make_recommender(self, train_csr):
        return PrunedEASE(pruned_matrix(EASE(lambda_=5.0).fit(train_csr).B, 4))


class TestPopularityContract(RecommenderContract):
    personalized = False

    def make_recommender(self, train_csr):
        return Popularity().fit(train_csr)


def test_ease_two_items_by_hand():
    # X = [[1,1],[1,0]] -> G = XᵀX = [[2,1],[1,1]]; λ = 1 -> A = [[3,1],[1,2]], det 5,
    # P = A⁻¹ = [[2,-1],[-1,3]]/5, B_ij = -P_ij / P_jj:
    # B_01 = (1/5)/(3/5) = 1/3  (= G_01 / (G_00 + λ): regress item 1 on item 0)
    # B_10 = (1/5)/(2/5) = 1/2  (= G_10 / (G_11 + λ))
    X = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 0.0]]))
    B = EASE(lambda_=1.0).fit(X).B
    np.testing.assert_allclose(B, [[0.0, 1 / 3], [1 / 2, 0.0]], rtol=1e-6)


def test_ease_matches_general_inverse():
    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float64))
    lam = 3.0
    P = np.linalg.inv(X.T @ X + lam * np.eye(12))
    expected = -P / np.diag(P)
    np.fill_diagonal(expected, 0.0)
    got = EASE(lam).fit(X).B
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.diag(got) == 0)


def test_ease_scores_are_user_items_times_B():
    X, _ = checkerboard()
    model = EASE(10.0).fit(X)
    idx, scores = model.recommend(X[:3], 4, filter_seen=False)
    dense = X[:3].toarray() @ model.B
    np.testing.assert_allclose(scores, np.take_along_axis(dense, idx, axis=1), rtol=1e-5)
    assert np.all(np.take_along_axis(dense, idx[:, :1], axis=1)[:, 0] == dense.max(axis=1))


def test_popularity_counts_distinct_users_and_ranks_by_them():
    # item 2 has 3 users, item 0 has 2, item 1 has 1 (value 5 still counts once), item 3 none
    X = sp.csr_matrix(np.array([[1, 5, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]], dtype=float))
    model = Popularity().fit(X)
    np.testing.assert_array_equal(model.counts, [2, 1, 3, 0])
    idx, scores = model.recommend(sp.csr_matrix((1, 4)), 4)
    np.testing.assert_array_equal(idx[0], [2, 0, 1, 3])
    np.testing.assert_array_equal(scores[0], [3, 2, 1, 0])
    idx, _ = model.recommend(sp.csr_matrix(np.array([[0, 0, 1, 0]])), 2)
    np.testing.assert_array_equal(idx[0], [0, 1])


def test_popularity_from_counts():
    model = Popularity.from_counts([1, 9, 4])
    idx, _ = model.recommend(sp.csr_matrix((2, 3)), 3)
    np.testing.assert_array_equal(idx, [[1, 2, 0], [1, 2, 0]])


@pytest.mark.parametrize("model", [EASE(1.0), Popularity()])
def test_nan_in_fit_raises(model):
    X = sp.csr_matrix(np.array([[1.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(X)


def test_bad_lambda_raises():
    for bad in (0, -1.0, "10", True):
        with pytest.raises(ValueError, match="lambda_"):
            EASE(bad)


def test_unfitted_model_raises():
    with pytest.raises(RuntimeError, match="fit"):
        EASE().recommend(sp.csr_matrix((1, 3)), 2)


def test_non_matrix_user_items_raises():
    model = Popularity.from_counts([1, 2, 3])
    with pytest.raises(ValueError, match="user_items"):
        model.recommend([[0, 1, 0]], 2)


def test_fit_ease_on_validation_picks_best_lambda():
    X, _ = checkerboard()
    features = Features.from_matrix(X, n_heldout_users=10, min_user_interactions=5, seed=3)
    grid = (0.5, 50.0, 5000.0)
    model, results, _ = fit_ease_on_validation(
        features.train, features.validation.fold_in, features.validation.holdout, grid=grid, max_expand=0
    )
    assert set(results) == set(grid)
    assert model.lambda_ == max(results, key=results.get)
    assert all(0.0 <= v <= 1.0 for v in results.values())


def test_fit_ease_on_validation_rejects_mismatched_items():
    X, _ = checkerboard()
    with pytest.raises(ValueError, match="val_fold_in"):
        fit_ease_on_validation(X, sp.csr_matrix((2, 5)), sp.csr_matrix((2, 5)), grid=(1.0,))


def test_mirror_upper_in_place_blockwise():
    rng = np.random.default_rng(0)
    S = rng.random((10, 10))
    S = S + S.T
    P = np.triu(S)  # lower triangle zero, as LAPACK potri leaves it
    mirror_upper_in_place(P, block=3)
    np.testing.assert_array_equal(P, S)


def test_gram_accumulates_over_user_chunks():
    rng = np.random.default_rng(2)
    X = sp.csr_matrix((rng.random((40000, 6)) < 0.2).astype(np.float64))
    np.testing.assert_array_equal(EASE.gram(X), (X.T @ X).toarray())


def test_fit_ease_on_validation_steps_past_an_edge_optimum():
    # on block data a huge λ washes out the item-item weights: the best of (3000, 9000) is the
    # lower edge, so the search tries 1000 (and 333.3 if 1000 is best again), never 27000
    X, _ = checkerboard()
    features = Features.from_matrix(X, n_heldout_users=10, min_user_interactions=5, seed=3)
    v = features.validation
    model, results, _ = fit_ease_on_validation(
        features.train, v.fold_in, v.holdout, grid=(9000.0, 3000.0), max_expand=2
    )
    assert 1000.0 in results and 27000.0 not in results
    assert 3 <= len(results) <= 4
    assert model.lambda_ == max(results, key=results.get)


@pytest.mark.parametrize(
    "grid, peak, max_expand, solved, chosen, kept",
    [
        # the middle pair (30, 100), then down the grid while validation improves: 300 and 1000 never solved;
        # the walk stopped at 10, a third of the best: kept (100 lost too, but the walk went on past it)
        ((1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0), 20.0, 0, [30.0, 100.0, 10.0], 30.0, {1 / 3: 10.0}),
        # the optimum below the grid: two steps of a third past its edge, the second one worse
        ((10.0, 30.0, 100.0, 300.0), 3.0, 2, [30.0, 100.0, 10.0, 10 / 3, 10 / 9], 10 / 3, {1 / 3: 10 / 9}),
        # above the grid: the one step allowed, and no more; the walk ended on its best, nothing to keep
        ((10.0, 30.0, 100.0), 500.0, 1, [30.0, 100.0, 300.0], 300.0, {}),
    ],
)
def test_lambda_search_walks_from_the_grids_middle(monkeypatch, grid, peak, max_expand, solved, chosen, kept):
    from vasp_model.recommenders import baselines

    seen = []
    fit_gram = baselines.EASE.fit_gram

    def recording(self, G, overwrite=False):
        seen.append(self.lambda_)
        return fit_gram(self, G, overwrite)

    def single_peaked(idx, holdout, k):  # validation nDCG that peaks at λ = peak (in log λ)
        return np.full(idx.shape[0], -(np.log(seen[-1] / peak) ** 2))

    monkeypatch.setattr(baselines.EASE, "fit_gram", recording)
    monkeypatch.setattr(baselines, "ndcg_at_k", single_peaked)
    X, _ = checkerboard()
    model, results, kept_models = fit_ease_on_validation(
        X, X[:4], X[:4], grid=grid, max_expand=max_expand, keep_factors=(1 / 3, 3.0)
    )
    np.testing.assert_allclose(seen, solved)
    np.testing.assert_allclose(list(results), solved)
    assert model.lambda_ == pytest.approx(chosen)
    assert {factor: m.lambda_ for factor, m in kept_models.items()} == pytest.approx(kept)
    for m in kept_models.values():  # the model solved at that λ, as a fresh solve gives it
        np.testing.assert_array_equal(m.B, baselines.EASE(m.lambda_).fit(X).B)


@pytest.mark.parametrize("order", ["C", "F"])
def test_ease_in_place_float32_solve_matches_float64(order):
    # the bounded-memory solve: B is the Gram matrix's own memory, and agrees with the float64 solve
    rng = np.random.default_rng(4)
    X = sp.csr_matrix((rng.random((300, 50)) < 0.2).astype(np.float64))
    G = np.asarray(EASE.gram(X, np.float32), order=order)
    assert G.dtype == np.float32
    got = EASE(7.0).fit_gram(G, overwrite=True).B
    assert np.shares_memory(got, G) and got.dtype == np.float32
    reference = EASE(7.0).fit(X).B
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(got) == 0)
    # C order either way (scoring multiplies CSR rows by B: an F-ordered B would be copied per call)
    assert got.flags.c_contiguous and reference.flags.c_contiguous


def test_ease_in_place_solve_refuses_a_gram_matrix_it_would_have_to_copy():
    G = EASE.gram(sp.csr_matrix(np.eye(3)), np.float32)
    for bad in (G.astype(np.int64), G[:, ::-1][::-1]):  # not float, not contiguous
        with pytest.raises(ValueError, match="overwrite=True needs a contiguous float32/float64 G"):
            EASE(1.0).fit_gram(bad, overwrite=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        EASE(1.0).fit_gram(np.full((2, 2), np.inf, np.float32), overwrite=True)


def test_float32_search_skips_a_lambda_too_small_for_the_precision():
    # items 0 and 1 always together: XᵀX = [[1, 1, 0], [1, 1, 0], [0, 0, 1]] is singular, and λ = 1e-9 is
    # lost in float32 (1 + 1e-9 == 1), so its Cholesky pivot is exactly 0; float64 keeps it
    X = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    fold_in, holdout = sp.csr_matrix(np.array([[1.0, 0.0, 0.0]])), sp.csr_matrix(np.array([[0.0, 1.0, 0.0]]))
    model, results, _ = fit_ease_on_validation(X, fold_in, holdout, grid=(1e-9, 1.0), max_expand=0, precision="float32")
    assert model.lambda_ == 1.0 and np.isnan(results[1e-9]) and results[1.0] == pytest.approx(1.0)
    with pytest.raises(NotPositiveDefinite, match="no λ of"):
        fit_ease_on_validation(X, fold_in, holdout, grid=(1e-9,), max_expand=0, precision="float32")
    model, _, _ = fit_ease_on_validation(X, fold_in, holdout, grid=(1e-9,), max_expand=0, precision="float64")
    assert model.lambda_ == 1e-9


def test_ease_default_solve_leaves_the_gram_matrix_alone():
    X, _ = checkerboard()
    G = EASE.gram(X)
    before = G.copy()
    EASE(3.0).fit_gram(G)
    np.testing.assert_array_equal(G, before)


def test_fit_ease_on_validation_float32_picks_the_same_lambda():
    X, _ = checkerboard()
    features = Features.from_matrix(X, n_heldout_users=10, min_user_interactions=5, seed=3)
    v = features.validation
    args = (features.train, v.fold_in, v.holdout)
    m64, r64, _ = fit_ease_on_validation(*args, grid=(0.5, 50.0, 5000.0), max_expand=0)
    m32, r32, _ = fit_ease_on_validation(*args, grid=(0.5, 50.0, 5000.0), max_expand=0, precision="float32")
    assert m32.lambda_ == m64.lambda_
    assert r32 == pytest.approx(r64, abs=1e-6)
    np.testing.assert_allclose(m32.B, m64.B, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="precision"):
        fit_ease_on_validation(*args, grid=(1.0,), precision="float16")


def random_spd(n: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = (rng.random((3 * n, n)) < 0.3).astype(np.float64)
    return (X.T @ X + 2.0 * np.eye(n)).astype(dtype)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_blocked_inverse_is_the_inverse(dtype, rtol):
    A = random_spd(37, dtype)  # 37 rows in blocks of 8: four whole blocks and a narrow last one
    M = A.copy()
    invert_spd_blocked(M, block=8)
    expected = np.linalg.inv(A.astype(np.float64))
    np.testing.assert_allclose(M, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    np.testing.assert_array_equal(M, M.T)
    assert M.dtype == dtype


def test_blocked_inverse_names_the_minor_that_is_not_positive_definite():
    A = np.eye(7)
    A[4, 4] = 0.0  # the leading minors of order 1..4 are positive definite, order 5 is singular
    with pytest.raises(NotPositiveDefinite, match="order 5"):
        invert_spd_blocked(A, block=3)
    with pytest.raises(ValueError, match="C-ordered"):
        invert_spd_blocked(np.asfortranarray(random_spd(5, np.float64)), block=2)


def test_wide_solves_go_block_by_block(monkeypatch):
    # OpenBLAS's threaded potrf/potri crash on very wide matrices: past the limit LAPACK only sees diagonal blocks
    import scipy.linalg

    from vasp_model.recommenders import spd_inverse

    widths = []
    real = scipy.linalg.get_lapack_funcs

    def recording(names, arrays):
        def spy(routine):
            def call(a, *args, **kwargs):
                widths.append(a.shape[0])
                return routine(a, *args, **kwargs)

            return call

        return tuple(spy(routine) for routine in real(names, arrays))

    monkeypatch.setattr(scipy.linalg, "get_lapack_funcs", recording)
    X, _ = checkerboard()
    expected64 = EASE(3.0).fit(X).B
    expected32 = EASE(3.0).fit_gram(EASE.gram(X, np.float32), overwrite=True).B
    assert max(widths) == X.shape[1]
    widths.clear()
    monkeypatch.setattr(spd_inverse, "THREADED_SOLVE_MAX_ROW_BYTES", X.shape[1] * 4 - 1)
    monkeypatch.setattr(spd_inverse, "SOLVE_BLOCK", 4)
    np.testing.assert_allclose(EASE(3.0).fit(X).B, expected64, rtol=1e-9, atol=1e-12)
    got32 = EASE(3.0).fit_gram(EASE.gram(X, np.float32), overwrite=True).B
    np.testing.assert_allclose(got32, expected32, rtol=1e-4, atol=1e-6)
    assert widths and max(widths) == 4


def test_pruned_matrix_keeps_each_sources_strongest_targets():
    B = np.array([[0.0, 0.9, -0.1], [0.2, 0.0, -0.8], [-0.5, 0.3, 0.0]], dtype=np.float32)
    # row 0 keeps 0.9 (column 1), row 1 keeps -0.8 (column 2), row 2 keeps -0.5 (column 0)
    got = pruned_matrix(B, 1, block=2)
    np.testing.assert_allclose(got.toarray(), [[0, 0.9, 0], [0, 0, -0.8], [-0.5, 0, 0]], rtol=0, atol=1e-7)
    assert got.dtype == np.float32 and sp.isspmatrix_csr(got)
    np.testing.assert_array_equal(pruned_matrix(B, 5).toarray(), B)  # k past the catalog keeps everything
    with pytest.raises(ValueError, match="neighbours"):
        pruned_matrix(B, 0)


def test_prune_rows_never_targets_the_item_itself():
    B = np.zeros((4, 4), dtype=np.float32)  # every weight ties with the diagonal
    B[0, 3] = 1.0
    targets, values = prune_rows(B, 3, block=3)
    assert targets.shape == values.shape == (4, 3) and targets.dtype == np.int32
    assert not np.any(targets == np.arange(4)[:, None])
    assert set(targets[0]) == {1, 2, 3} and values[0][list(targets[0]).index(3)] == 1.0
    with pytest.raises(ValueError, match="neighbours"):
        prune_rows(B, 4)


def test_pruned_ease_with_every_neighbour_ranks_like_ease():
    X, _ = checkerboard()
    ease = EASE(10.0).fit(X)
    full, _ = ease.recommend(X[:20], 5)
    pruned, _ = PrunedEASE(pruned_matrix(ease.B, X.shape[1])).recommend(X[:20], 5)
    np.testing.assert_array_equal(pruned, full)
