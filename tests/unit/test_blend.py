"""VASP blended with closed-form EASE: the score rule, the weights chosen on validation, and persistence."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from vasp_model.core.config import ModelConfig  # noqa: E402
from vasp_model.evaluation.metrics import ndcg_at_k, topk_from_scores  # noqa: E402
from vasp_model.nn.model import build_model  # noqa: E402
from vasp_model.recommenders.baselines import EASE  # noqa: E402
from vasp_model.recommenders.blend import (  # noqa: E402
    BlendWeights,
    CrossFit,
    EaseBlend,
    blended,
    blended_ndcg,
    choose_blend,
    choose_weights,
    halvings,
    top_blended,
)
from vasp_model.recommenders.bundle import ModelBundle  # noqa: E402
from vasp_model.recommenders.host_ease import sigmoid_product  # noqa: E402

TINY = ModelConfig(hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1, dropout=0.2, ease_init="glorot_uniform")


def _two_groups(users: int, seed: int) -> sp.csr_matrix:
    """Users who each take 8 items of one of two blocks of 20 items: EASE learns the blocks."""
    rng = np.random.default_rng(seed)
    X = np.zeros((users, 40), np.float32)
    for u, g in enumerate(rng.integers(0, 2, users)):
        X[u, rng.choice(np.arange(g * 20, g * 20 + 20), 8, replace=False)] = 1
    return sp.csr_matrix(X)


def _fold_in_holdout(X: sp.csr_matrix, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    dense = X.toarray()
    holdout = np.zeros_like(dense)
    for u in range(dense.shape[0]):
        items = np.flatnonzero(dense[u])
        held = rng.choice(items, 2, replace=False)
        dense[u, held], holdout[u, held] = 0, 1
    return sp.csr_matrix(dense), sp.csr_matrix(holdout)


def test_weight_zero_ranks_like_vasp_and_rows_are_standardized():
    rng = np.random.default_rng(0)
    p, s = rng.uniform(0.01, 0.99, (5, 30)), rng.normal(size=(5, 30))
    alone = blended(p, s, 0.0)
    assert np.array_equal(np.argsort(-alone, axis=1), np.argsort(-p, axis=1))
    mixed = blended(p, s, 0.3)
    assert np.allclose(mixed.mean(axis=1), 0, atol=1e-5)
    assert np.allclose(
        mixed, 0.7 * blended(p, s, 0.0) + 0.3 * (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True), atol=1e-5
    )


def _float64_blend(p, s, w):
    v = np.log(np.maximum(p.astype(np.float64), 1e-30))
    z = (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True)
    return (1 - w) * (v - v.mean(1, keepdims=True)) / v.std(1, keepdims=True) + w * z


@pytest.mark.parametrize("threads", [1, 3])
def test_the_compiled_blend_is_as_accurate_as_float32_allows(threads):
    """Probabilities over the whole range (0, below the 1e-30 floor, subnormal, 1) against float64; NaN
    spoils only its own row; at weight 0 the EASE scores are not read."""
    rng = np.random.default_rng(4)
    p = (rng.random((9, 3000)) ** 12).astype(np.float32)
    p[0, :40] = [0.0, 1e-35, 1e-40, 1.0] * 10
    s = rng.normal(0, 3, (9, 3000)).astype(np.float64)
    for w in (0.0, 0.2):
        got = blended(p, s, w, threads)
        assert got.dtype == np.float32 and got.shape == p.shape
        np.testing.assert_allclose(got, _float64_blend(p, s, w), atol=2e-6)
    p[4, 9] = np.nan
    s[:, 0] = np.nan
    alone = blended(p, s, 0.0, threads)
    assert np.isnan(alone[4]).all() and np.isfinite(np.delete(alone, 4, axis=0)).all()
    with pytest.raises(ValueError, match=r"probabilities \(9, 3000\) and EASE scores \(9, 2\)"):
        blended(p, s[:, :2], 0.2)


@pytest.mark.parametrize(
    "n_rows, n_items, k, density",
    [
        (200, 20_000, 100, 0.003),  # a threshold from a sample, then only the candidates sorted
        (9, 3_000, 100, 0.5),  # fewer than 16k items: every row sorted whole
        (5, 30, 100, 0.3),  # k beyond the catalog: -1 slots
        (64, 5_000, 10, 0.9),  # most items masked: too few candidates, sorted whole
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_ranking_the_blend_in_one_pass_gives_the_lists_of_the_blended_scores(n_rows, n_items, k, density, threads):
    """The same items and scores, bit for bit, as the product, the blend and the metrics' top-k one after the
    other: ties (a row of equal logits and EASE scores) to the lower item, a NaN row's slots -1."""
    rng = np.random.default_rng(n_items)
    logits = [rng.normal(0, 4, (n_rows, n_items)).astype(np.float32) for _ in range(3)]
    ease = rng.normal(0, 1, (n_rows, n_items)).astype(np.float32)
    for x in (*logits, ease):
        x[0, :] = 0.0
    logits[1][min(1, n_rows - 1), 0] = np.nan
    mask = sp.random(n_rows, n_items, density=density, format="csr", random_state=2, dtype=np.float32)
    copies = [x.copy() for x in logits]
    for w in (0.0, 0.15):
        expected = topk_from_scores(blended(sigmoid_product([x.copy() for x in logits]), ease, w), mask, k, True)
        idx, vals = top_blended(logits, ease, w, mask, k, threads)
        np.testing.assert_array_equal(idx, expected[0])
        np.testing.assert_array_equal(vals, expected[1])
        assert vals.dtype == np.float32 and idx.shape == (n_rows, k)
    if n_rows > 1:
        assert (idx[1] == -1).all()
    for x, copy in zip(logits, copies, strict=True):
        np.testing.assert_array_equal(x, copy)
    with pytest.raises(ValueError, match=r"EASE scores \(2, 4\) and logits \(2, 3\)"):
        top_blended([np.zeros((2, 3), np.float32)], np.zeros((2, 4)), 0.1, None, 2)


@pytest.mark.parametrize(("n_items", "k"), [(3_000, 100), (40, 100), (5_000, 10)])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_blends_ndcg_in_one_pass_is_that_of_its_lists(n_items, k, threads):
    """Each option's per-row nDCG@k is the metrics' nDCG of the lists of the blended scores: the masked items left
    out, ties (a row of equal scores) to the lower item, NaN for a row without holdout, k beyond the catalog."""
    rng = np.random.default_rng(n_items)
    n_rows = 50
    p = rng.uniform(0, 1, (n_rows, n_items)).astype(np.float32)
    ease = rng.normal(0, 1, (n_rows, n_items)).astype(np.float32)
    p[0], ease[0] = 0.5, 0.0
    mask = sp.random(n_rows, n_items, density=0.05, format="csr", random_state=1, dtype=np.float32)
    holdout = sp.random(n_rows, n_items, density=0.02, format="csr", random_state=2, dtype=np.float32)
    mask = sp.lil_matrix(mask)
    mask[0, :] = 0
    mask = sp.csr_matrix(mask)
    holdout = sp.lil_matrix(holdout - holdout.multiply(mask.astype(bool)))  # disjoint from the fold-in
    holdout[0, :] = 0
    holdout[0, :3] = 1  # the tied row's first items
    holdout[2, :] = 0  # no holdout
    holdout = sp.csr_matrix(holdout)
    holdout.eliminate_zeros()
    holdout.indices[: holdout.indptr[1]] = holdout.indices[: holdout.indptr[1]][::-1].copy()  # unsorted in a row
    weights = np.stack([np.linspace(0, 0.5, n_rows), np.zeros(n_rows), np.full(n_rows, 0.3)])
    got = blended_ndcg(p, ease, weights, mask, holdout, k, threads)
    expected = np.stack([ndcg_at_k(topk_from_scores(blended(p, ease, w), mask, k), holdout, k) for w in weights])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    empty = np.diff(holdout.indptr) == 0
    assert empty[2] and (np.isnan(got) == empty).all()
    assert got[1, 0] == pytest.approx(1.0)  # equal scores rank the lower items first: the holdout's 3 items
    wider = sp.hstack([holdout, sp.csr_matrix(np.ones((n_rows, 2), np.float32))], format="csr")  # beyond a cap
    capped = blended_ndcg(p, ease, weights, mask, wider, k, threads)
    np.testing.assert_allclose(
        capped,
        [ndcg_at_k(topk_from_scores(blended(p, ease, w), mask, k), wider, k) for w in weights],
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match=r"weights must be \[options, 50\]"):
        blended_ndcg(p, ease, weights[:, :3], mask, holdout, k)


def test_validation_picks_ease_for_an_uninformed_vasp_and_nothing_for_an_oracle():
    fold_in, holdout = _fold_in_holdout(_two_groups(200, 1), seed=2)
    B = EASE(10.0).fit(_two_groups(400, 3)).B
    counts = np.diff(_two_groups(400, 3).indptr)
    rng = np.random.default_rng(4)
    noise = lambda x: rng.uniform(0.01, 0.99, x.shape)  # noqa: E731
    weights, grid = choose_weights(noise, B, fold_in, holdout, counts)
    assert len(grid) == 64 and (weights.light, weights.heavy) == (0.5, 0.5) and grid[(0.5, 0.5)] > grid[(0.0, 0.0)]
    oracle = lambda x: np.where(holdout.toarray() > 0, 0.99, 0.01)  # noqa: E731
    weights, grid = choose_weights(oracle, B, fold_in, holdout, counts)
    assert weights.off and grid[(0.0, 0.0)] == pytest.approx(1.0)


def test_validation_picks_the_ease_matrix_that_blends_best_and_ties_go_to_the_first():
    fold_in, holdout = _fold_in_holdout(_two_groups(200, 1), seed=2)
    B = EASE(10.0).fit(_two_groups(400, 3)).B
    counts = np.diff(_two_groups(400, 3).indptr)
    noise = lambda x: np.random.default_rng(4).uniform(0.01, 0.99, x.shape)  # noqa: E731
    choice = choose_blend(noise, [-B, B], fold_in, holdout, counts)  # -B ranks the wrong block
    assert choice.index == 1 and (choice.weights, choice.grids[1]) == choose_weights(noise, B, fold_in, holdout, counts)
    assert max(choice.grids[1].values()) > max(choice.grids[0].values()) and len(choice.grids) == 2
    assert choice.cross_fitted is None and choice.deciding is choice.grids
    choice = choose_blend(noise, [B, B.copy()], fold_in, holdout, counts)
    assert choice.index == 0 and choice.grids[0] == choice.grids[1]
    with pytest.raises(ValueError, match="at least one"):
        choose_blend(noise, [], fold_in, holdout, counts)


def test_halvings_score_every_user_once_at_the_epoch_the_other_half_chose():
    rng = np.random.default_rng(3)
    ndcg = rng.uniform(0, 1, (5, 41)).astype(np.float32)
    ndcg[:, 7] = np.nan  # a user without holdout counts in no mean
    assignments = halvings(ndcg, [4, 1, 2], 6, seed=11)
    flat = lambda a: [(epoch, users.tolist()) for epoch, users in a]  # noqa: E731
    assert len(assignments) == 12 and flat(assignments) == flat(halvings(ndcg, [1, 2, 4], 6, seed=11))
    assert flat(assignments) != flat(halvings(ndcg, [1, 2, 4], 6, seed=12))
    for first, second in zip(assignments[::2], assignments[1::2], strict=True):
        users = np.concatenate([first[1], second[1]])
        assert sorted(users.tolist()) == list(range(41)) and abs(len(first[1]) - len(second[1])) <= 1
        for (epoch, _), (_, chose) in ((first, second), (second, first)):
            means = {e: np.nanmean(ndcg[e, chose]) for e in (1, 2, 4)}
            assert epoch == max(means, key=lambda e: (means[e], -e))  # only the given epochs, ties to the earlier
    tied = halvings(np.ones((3, 10), np.float32), [0, 1, 2], 2, seed=0)
    assert {epoch for epoch, _ in tied} == {0}


def test_the_cross_fitted_blend_is_chosen_on_the_epochs_the_other_users_chose():
    """At the served epoch the network is an oracle on validation, at the epoch the halves chose it is noise: the
    served epoch's grid keeps VASP alone, the cross-fitted one blends EASE in; every half at the served epoch
    gives the served choice and grid."""
    fold_in, holdout = _fold_in_holdout(_two_groups(200, 1), seed=2)
    B = EASE(10.0).fit(_two_groups(400, 3)).B
    counts = np.diff(_two_groups(400, 3).indptr)
    oracle = lambda x: np.where(holdout.toarray() > 0, 0.99, 0.01)  # noqa: E731
    noise = np.random.default_rng(4).uniform(0.01, 0.99, fold_in.shape)
    loaded = []
    at_epoch = lambda epoch: loaded.append(epoch) or noise  # noqa: E731
    ndcg = np.vstack([np.full(200, 0.1), np.full(200, 0.9)]).astype(np.float32)  # the halves choose epoch 1
    cross_fit = CrossFit(at_epoch, halvings(ndcg, [0, 1], 5, seed=0), served_epoch=0)
    assert cross_fit.epochs == {1: 10}
    choice = choose_blend(oracle, [B], fold_in, holdout, counts, cross_fit=cross_fit)
    assert choice.grids[0] == choose_weights(oracle, B, fold_in, holdout, counts)[1]
    assert choice.grids[0][(0.0, 0.0)] == pytest.approx(1.0)
    assert (choice.weights.light, choice.weights.heavy) == (0.5, 0.5) and choice.deciding is choice.cross_fitted
    # the cross-fitted grid is each option's mean over the users, at the noisy epoch: the noise's own grid
    assert choice.cross_fitted[0] == pytest.approx(choose_weights(lambda x: noise, B, fold_in, holdout, counts)[1])
    assert loaded == [1]  # each epoch's scores read once per EASE matrix
    served = CrossFit(at_epoch, halvings(ndcg[::-1], [0, 1], 5, seed=0), served_epoch=0)
    choice = choose_blend(oracle, [B], fold_in, holdout, counts, cross_fit=served)
    assert choice.weights.off and choice.cross_fitted[0] == pytest.approx(choice.grids[0]) and loaded == [1]


def test_a_pair_of_weights_is_served_over_one_weight_only_when_its_gain_clears_one_standard_error():
    from vasp_model.recommenders.blend import _best_option

    pairs = [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5)]
    rng = np.random.default_rng(0)
    one = rng.uniform(0.2, 0.6, 400)
    noisy = one + rng.normal(0.002, 0.05, 400)  # ahead on average, within its standard error
    per_user = np.vstack([one - 0.01, noisy, one - 0.02, one])
    index, pair, (mean, se) = _best_option([per_user], pairs)
    assert (index, pairs[pair]) == (0, (0.5, 0.5)) and 0 < mean <= se
    sure = per_user.copy()
    sure[1] = one + 0.01 + rng.normal(0, 0.05, 400)
    index, pair, (mean, se) = _best_option([per_user, sure], pairs)
    assert (index, pairs[pair]) == (1, (0.0, 0.5)) and mean > se
    assert _best_option([np.vstack([one, one, one, one])], pairs) == (0, 0, None)  # ties: one weight, the smaller


def test_validation_gives_ease_to_the_users_whose_vasp_is_uninformed():
    """Users with 4 items hold out 2 of the other block (EASE points the wrong way; VASP knows them, noisily);
    users with 14 hold out 2 more of their own block (VASP guesses): validation keeps VASP alone for the light
    users and blends in EASE for the heavy ones, each row at its own weight."""
    rng = np.random.default_rng(5)
    seen, held = np.zeros((2, 300, 40), np.float32)
    for u, g in enumerate(rng.integers(0, 2, 300)):
        light = u % 2 == 0
        own = rng.permutation(np.arange(g * 20, g * 20 + 20))
        seen[u, own[: 4 if light else 14]] = 1
        held[u, rng.choice(np.arange((1 - g) * 20, (2 - g) * 20), 2) if light else own[14:16]] = 1
    B = EASE(10.0).fit(_two_groups(400, 7)).B
    light_rows = (np.arange(300) % 2 == 0)[:, None]

    def half_informed(x):
        noise = rng.uniform(0.2, 0.62, x.shape)
        return np.where(light_rows, np.where(held > 0, 0.6, noise), rng.uniform(0.01, 0.99, x.shape))

    weights, grid = choose_weights(
        half_informed, B, sp.csr_matrix(seen), sp.csr_matrix(held), np.array([4] * 5 + [14] * 5)
    )
    assert (weights.light, weights.heavy, weights.light_items, weights.heavy_items) == (0.0, 0.5, 4.0, 14.0)
    assert grid[(0.0, 0.5)] > max(v for (a, b), v in grid.items() if a == b)


def test_blend_weights_grow_with_the_users_items_between_the_bounds():
    w = BlendWeights(0.1, 0.5, light_items=4.0, heavy_items=64.0)
    rows = sp.csr_matrix(np.tri(100, 100, dtype=np.float32)[[0, 3, 15, 63, 99]])  # 1, 4, 16, 64, 100 items
    np.testing.assert_allclose(w.of_rows(rows), [0.1, 0.1, 0.3, 0.5, 0.5])
    np.testing.assert_array_equal(BlendWeights(0.2, 0.2).of_rows(rows), np.full(5, 0.2))
    np.testing.assert_array_equal(BlendWeights(0.0, 0.4, 16.0, 16.0).of_rows(rows), [0, 0, 0.4, 0.4, 0.4])
    assert BlendWeights.from_dict(w.to_dict()) == w and BlendWeights(0.0, 0.0).off
    assert BlendWeights.from_train_counts(0.0, 0.1, np.arange(1, 102)) == BlendWeights(0.0, 0.1, 11.0, 91.0)
    for bad in (dict(light=1.0, heavy=0.0), dict(light=0.0, heavy=-0.1), dict(light=0, heavy=0, light_items=0.5)):
        with pytest.raises(ValueError, match="blend"):
            BlendWeights(**bad)
    with pytest.raises(ValueError, match="light_items <= heavy_items"):
        BlendWeights(0.0, 0.1, 9.0, 3.0)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_weight_per_row_blends_each_row_as_its_own_weight_would(threads):
    rng = np.random.default_rng(8)
    logits = [rng.normal(0, 3, (7, 500)).astype(np.float32) for _ in range(3)]
    ease = rng.normal(0, 1, (7, 500)).astype(np.float32)
    weights = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5])
    p = sigmoid_product([x.copy() for x in logits])
    each = np.vstack([blended(p[r : r + 1], ease[r : r + 1], w) for r, w in enumerate(weights)])
    np.testing.assert_array_equal(blended(p, ease, weights, threads), each)
    idx, vals = top_blended(logits, ease, weights, None, 20, threads)
    expected = topk_from_scores(each, None, 20, True)
    np.testing.assert_array_equal(idx, expected[0])
    np.testing.assert_array_equal(vals, expected[1])


def test_blend_weight_must_be_inside_zero_one():
    for w in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="blend weight"):
            EaseBlend(w, np.zeros((3, 3)))


def test_a_blended_bundle_scores_the_blend_and_keeps_it_through_save_and_load(tmp_path):
    X = _two_groups(50, 5)
    bundle = ModelBundle(
        build_model(40, TINY, seed=0), np.array([f"i{j}" for j in range(40)], dtype=object), np.arange(40)
    )
    alone = bundle.scores(X)
    B = EASE(10.0).fit(X).B
    bundle.blend = EaseBlend(0.3, B)
    expected = blended(alone, X.toarray() @ B, 0.3)
    np.testing.assert_allclose(bundle.scores(X), expected, rtol=1e-4, atol=1e-4)
    bundle.save(str(tmp_path))
    loaded = ModelBundle.load(str(tmp_path))
    assert loaded.blend is not None and loaded.blend.weights == BlendWeights(0.3, 0.3)
    np.testing.assert_allclose(loaded.scores(X), expected, rtol=1e-4, atol=1e-4)
    idx, _ = loaded.recommend(X, 5)
    assert not (X.toarray()[np.arange(50)[:, None], idx] > 0).any()  # seen items stay out
    assert loaded.host_ease is not None  # each row multiplied, blended and ranked in one pass: the same lists
    np.testing.assert_array_equal(idx, topk_from_scores(loaded.scores(X), X, 5))


def test_a_bundle_keeps_weights_by_the_users_items_and_reads_the_one_weight_of_older_bundles(tmp_path):
    import json

    rng = np.random.default_rng(9)
    X = sp.csr_matrix((rng.random((60, 40)) < np.linspace(0.05, 0.6, 60)[:, None]).astype(np.float32))
    bundle = ModelBundle(
        build_model(40, TINY, seed=0), np.array([f"i{j}" for j in range(40)], dtype=object), np.arange(40)
    )
    B = EASE(10.0).fit(X).B
    weights = BlendWeights(0.0, 0.4, light_items=4.0, heavy_items=16.0)
    expected = blended(bundle.scores(X), X.toarray() @ B, weights.of_rows(X))
    bundle.blend = EaseBlend(weights, B)
    bundle.save(str(tmp_path))
    loaded = ModelBundle.load(str(tmp_path))
    assert loaded.blend.weights == weights and loaded.host_ease is not None
    np.testing.assert_allclose(loaded.scores(X), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(loaded.recommend(X, 5)[0], topk_from_scores(loaded.scores(X), X, 5))
    meta_path = os.path.join(tmp_path, "bundle.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    meta.pop("blend")
    with open(meta_path, "w") as fh:
        json.dump({**meta, "blend_weight": 0.3}, fh)
    assert ModelBundle.load(str(tmp_path)).blend.weights == BlendWeights(0.3, 0.3)


def test_a_pruned_blend_keeps_its_sparse_b_through_save_and_load(tmp_path):
    from vasp_model.recommenders.baselines import pruned_matrix

    X = _two_groups(50, 6)
    B = pruned_matrix(EASE(10.0).fit(X).B, 5)
    bundle = ModelBundle(
        build_model(40, TINY, seed=0), np.array([f"i{j}" for j in range(40)], dtype=object), np.arange(40)
    )
    expected = blended(bundle.scores(X), (X @ B).toarray(), 0.2)
    bundle.blend = EaseBlend(0.2, B)
    bundle.save(str(tmp_path))
    assert "ease_blend.npz" in os.listdir(tmp_path) and "ease_blend.npy" not in os.listdir(tmp_path)
    loaded = ModelBundle.load(str(tmp_path))
    assert sp.issparse(loaded.blend.B) and loaded.blend.B.nnz == B.nnz
    np.testing.assert_allclose(loaded.scores(X), expected, rtol=1e-4, atol=1e-4)
    fold_in, holdout = _fold_in_holdout(_two_groups(100, 7), seed=8)
    counts = np.diff(X.indptr)
    dense_choice = choose_weights(lambda x: np.full(x.shape, 0.5), B.toarray(), fold_in, holdout, counts)
    assert choose_weights(lambda x: np.full(x.shape, 0.5), B, fold_in, holdout, counts) == dense_choice
