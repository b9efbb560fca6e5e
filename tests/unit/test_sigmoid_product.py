"""The compiled product of sigmoids, and its ranking in the same pass, against NumPy and the metrics' top-k."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit

from vasp_model.evaluation.metrics import topk_from_scores
from vasp_model.recommenders.host_ease import sigmoid_product, top_sigmoid_product


def _logits(shape, seed: int = 3, scales=(2.0, 8.0, 30.0)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, size=shape).astype(np.float32) for scale in scales]


def _float64_product(logits) -> np.ndarray:
    return np.prod([expit(x.astype(np.float64)) for x in logits], axis=0)


def test_the_product_is_as_accurate_as_float32_allows_over_the_whole_range():
    logits = _logits((7, 2500))
    logits[0][0, :200] = np.linspace(-120, 120, 200)  # e^x over- and underflows float32 at the ends
    logits[1][1, :4] = [-np.inf, np.inf, 88.7, -88.7]
    logits[2][2, :3] = [0.0, -0.0, 1e-30]
    expected = _float64_product(logits)
    got = sigmoid_product([x.copy() for x in logits], threads=2)
    assert got.dtype == np.float32 and not np.isnan(got).any()
    normal = expected > np.finfo(np.float32).tiny
    np.testing.assert_allclose(got[normal], expected[normal], rtol=1e-6)
    assert np.all(np.abs(got[~normal]) <= np.finfo(np.float32).tiny)  # sigmoid(-inf) is exactly 0
    assert got[1, 0] == 0.0 and got[1, 1] == pytest.approx(expected[1, 1], rel=1e-6)


def test_the_product_is_returned_in_the_first_logits_and_nan_stays_nan():
    logits = _logits((3, 40))
    logits[1][2, 5] = np.nan
    first = logits[0]
    got = sigmoid_product(logits, threads=1)
    assert got is first
    assert np.isnan(got[2, 5]) and np.isnan(got).sum() == 1


def test_a_single_logits_array_is_its_sigmoid():
    (x,) = _logits((4, 33), scales=(5.0,))
    np.testing.assert_allclose(sigmoid_product([x.copy()]), expit(x.astype(np.float64)), rtol=1e-6, atol=1e-37)


@pytest.mark.parametrize(
    "n_rows, n_items, k, density",
    [
        (300, 20_000, 100, 0.003),  # a threshold from a sample, then only the candidates sorted
        (9, 3_000, 100, 0.5),  # fewer than 16k items: every row sorted whole
        (5, 30, 100, 0.3),  # k beyond the catalog: -1 slots
        (4, 1, 3, 0.0),
        (64, 5_000, 10, 0.9),  # most items masked: too few candidates, sorted whole
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_ranking_in_the_same_pass_matches_the_metrics_top_k_of_the_product(n_rows, n_items, k, density, threads):
    logits = _logits((n_rows, n_items), seed=n_items)
    for x in logits:
        x[0, :] = 0.0  # all ties: the lower items first
    logits[1][min(1, n_rows - 1), : min(5, n_items)] = np.nan  # NaN ranks as -inf
    mask = sp.random(n_rows, n_items, density=density, format="csr", random_state=2, dtype=np.float32)
    expected = topk_from_scores(sigmoid_product([x.copy() for x in logits]), mask, k, return_scores=True)
    idx, vals = top_sigmoid_product(logits, mask, k, threads)
    np.testing.assert_array_equal(idx, expected[0])
    np.testing.assert_array_equal(vals, expected[1])
    assert idx.shape == (n_rows, k) and vals.dtype == np.float32


def test_ranking_leaves_the_logits_alone_and_takes_no_mask():
    logits = _logits((6, 400))
    copies = [x.copy() for x in logits]
    idx, vals = top_sigmoid_product(logits, None, 7)
    for x, copy in zip(logits, copies, strict=True):
        np.testing.assert_array_equal(x, copy)
    expected = np.argsort(-_float64_product(logits), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, expected)
    assert np.all(np.diff(vals, axis=1) <= 0)


def test_bad_logits_and_masks_are_named():
    with pytest.raises(ValueError, match="logits must be 2-D arrays of one shape"):
        sigmoid_product([np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\), the logits \(2, 3\)"):
        top_sigmoid_product([np.zeros((2, 3), np.float32)], sp.csr_matrix((2, 4)), 2)
