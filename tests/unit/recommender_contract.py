"""Shared behaviour checks for every recommender (VASP bundle, EASE, popularity).

Usage (pytest collects the subclass, not this mixin)::

    from recommender_contract import RecommenderContract

    class TestMyModelContract(RecommenderContract):
        def make_recommender(self, train_csr):
            return MyModel().fit(train_csr)      # anything with recommend(user_items, n, filter_seen=True)

        # optional
        def save_and_load(self, rec, path):     # return the reloaded recommender; None skips the test
            rec.save(path); return MyModel.load(path)

Contract checked here: ``recommend(user_items, n, filter_seen=True) -> (item_idx [U, n] int,
scores [U, n] float)``, best first, distinct items per row, seen items never returned when
``filter_seen``; when fewer than n items are available the tail slots are item -1 with score
-inf; bad ``n`` / wrong-shaped ``user_items`` raise ValueError (or IndexError) naming the argument.

The data is a checkerboard: two disjoint user groups, group A using only even items and group B
only odd items, with group B larger (so its items are the most popular overall). A personalised
model must put an unseen item of the user's own block first; popularity cannot, so subclasses
of non-personalised models set ``personalized = False`` and get the most-popular-unseen check instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

N_ITEMS = 20
N_USERS_A = 30
N_USERS_B = 45
ITEMS_PER_USER = 7


def checkerboard(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Train matrix [75, 20] and each user's group (0 = A/even items, 1 = B/odd items)."""
    rng = np.random.default_rng(seed)
    rows, cols, groups = [], [], []
    for u in range(N_USERS_A + N_USERS_B):
        group = 0 if u < N_USERS_A else 1
        block = np.arange(group, N_ITEMS, 2)
        items = rng.choice(block, size=ITEMS_PER_USER, replace=False)
        rows += [u] * ITEMS_PER_USER
        cols += items.tolist()
        groups.append(group)
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS_A + N_USERS_B, N_ITEMS))
    return X, np.array(groups)


def query_users() -> tuple[sp.csr_matrix, np.ndarray]:
    """Four new users: two of group A (even items), two of group B (odd items), 3-4 items each."""
    rows = [[0, 2, 4], [6, 8, 10, 12], [1, 3, 5], [11, 13, 15, 17]]
    groups = np.array([0, 0, 1, 1])
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), N_ITEMS)), groups


class RecommenderContract:
    personalized = True

    def make_recommender(self, train_csr):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def save_and_load(self, rec, path):
        """Override to return a saved-and-reloaded copy of ``rec``; None skips the round-trip test."""
        return None

    @pytest.fixture(scope="class")
    def fitted(self):
        X, _ = checkerboard()
        return self.make_recommender(X)

    @staticmethod
    def _check_output(idx, scores, n_users, n):
        idx, scores = np.asarray(idx), np.asarray(scores)
        assert idx.shape == (n_users, n) and scores.shape == (n_users, n)
        assert np.issubdtype(idx.dtype, np.integer)
        assert np.issubdtype(scores.dtype, np.floating)
        assert idx.min() >= -1 and idx.max() < N_ITEMS
        for row_idx, row_scores in zip(idx, scores, strict=True):
            valid = row_idx >= 0
            # valid items first, then padding; distinct; scores non-increasing
            assert not np.any(valid[1:] & ~valid[:-1]), "padding (-1) must come after real items"
            assert len(set(row_idx[valid].tolist())) == valid.sum(), "items repeat within a row"
            assert np.all(np.diff(row_scores[valid]) <= 1e-6), "scores must be sorted best first"
            assert np.all(np.isneginf(row_scores[~valid]))
            assert np.all(np.isfinite(row_scores[valid]))

    def test_top1_known_on_checkerboard(self, fitted):
        queries, groups = query_users()
        idx, scores = fitted.recommend(queries, 5)
        self._check_output(idx, scores, queries.shape[0], 5)
        seen = [set(queries[u].indices.tolist()) for u in range(queries.shape[0])]
        for u, group in enumerate(groups):
            top1 = int(idx[u, 0])
            assert top1 not in seen[u]
            if self.personalized:
                assert top1 % 2 == group, f"user {u} of group {group} got item {top1} from the other block"
            else:
                X, _ = checkerboard()
                counts = np.diff(X.tocsc().indptr)
                unseen = [i for i in range(N_ITEMS) if i not in seen[u]]
                assert counts[top1] == max(counts[i] for i in unseen)

    def test_seen_items_filtered(self, fitted):
        queries, _ = query_users()
        idx, _ = fitted.recommend(queries, N_ITEMS - 4)
        for u in range(queries.shape[0]):
            assert not set(idx[u].tolist()) & set(queries[u].indices.tolist())

    def test_filter_seen_false_ranks_all_items(self, fitted):
        queries, _ = query_users()
        idx, scores = fitted.recommend(queries, N_ITEMS, filter_seen=False)
        self._check_output(idx, scores, queries.shape[0], N_ITEMS)
        assert np.all(np.sort(idx, axis=1) == np.arange(N_ITEMS))

    def test_n_larger_than_available_items(self, fitted):
        queries, _ = query_users()
        n = N_ITEMS + 5
        idx, scores = fitted.recommend(queries, n)
        self._check_output(idx, scores, queries.shape[0], n)
        for u in range(queries.shape[0]):
            n_seen = queries[u].nnz
            valid = idx[u][idx[u] >= 0]
            assert valid.size == N_ITEMS - n_seen
            assert set(valid.tolist()) == set(range(N_ITEMS)) - set(queries[u].indices.tolist())

    def test_batch_matches_single_rows(self, fitted):
        queries, _ = query_users()
        idx, scores = fitted.recommend(queries, 6)
        for u in range(queries.shape[0]):
            one_idx, one_scores = fitted.recommend(queries[u : u + 1], 6)
            np.testing.assert_allclose(one_scores[0], scores[u], rtol=1e-4, atol=1e-6)
            assert one_idx[0, 0] == idx[u, 0] or np.isclose(one_scores[0, 0], one_scores[0, 1])

    def test_user_without_items_gets_a_full_list(self, fitted):
        empty = sp.csr_matrix((2, N_ITEMS), dtype=np.float32)
        idx, scores = fitted.recommend(empty, 5)
        self._check_output(idx, scores, 2, 5)
        assert np.all(idx >= 0)

    @pytest.mark.parametrize("n", [0, -3, 2.5, None])
    def test_bad_n_raises(self, fitted, n):
        queries, _ = query_users()
        with pytest.raises((ValueError, TypeError), match="n"):
            fitted.recommend(queries, n)

    def test_wrong_item_count_raises(self, fitted):
        bad = sp.csr_matrix((3, N_ITEMS + 1), dtype=np.float32)
        with pytest.raises((ValueError, IndexError), match="user_items"):
            fitted.recommend(bad, 5)

    def test_save_load_round_trip(self, fitted, tmp_path):
        loaded = self.save_and_load(fitted, tmp_path / "model")
        if loaded is None:
            pytest.skip("this recommender has no save/load")
        queries, _ = query_users()
        idx, scores = fitted.recommend(queries, 8)
        idx2, scores2 = loaded.recommend(queries, 8)
        np.testing.assert_array_equal(idx, idx2)
        np.testing.assert_allclose(scores, scores2, rtol=1e-6)
