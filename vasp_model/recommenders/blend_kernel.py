"""The compiled loops of :func:`vasp_model.recommenders.blend.blended` and
:func:`~vasp_model.recommenders.blend.top_blended` (Numba; importing this module imports Numba, so the blend
imports it on first use).

``log`` is computed here rather than by the C library, whose scalar calls keep a loop from being
vectorized: ``x = 2^e · m`` read from the float's bits with ``m`` in ``[√½, √2)``, then
``log m = 2 atanh(t)``, ``t = (m − 1) / (m + 1)``, by its series to ``t^9`` (truncation below 1e-9).
"""

import math

import numba
import numpy as np

from vasp_model.recommenders.sigmoid_product_kernel import int_bits_as_float, row_product, top_of_row

_FLOOR = np.float32(1e-30)  # probabilities below it count as it (the log of 0 is -inf)
_FLOOR_BITS = _FLOOR.view(np.int32)
_EPS = 1e-9  # added to each row's standard deviation
_LN2 = np.float32(math.log(2.0))
_SQRT2 = np.float32(math.sqrt(2.0))
_ZERO, _ONE, _TWO, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
_C3, _C5, _C7, _C9 = (np.float32(2.0 / i) for i in (3, 5, 7, 9))


@numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _log_floored(x, bits):
    """``log(max(x, 1e-30))`` of a float32 ``x`` below 2^128 whose bits are the int32 ``bits``; NaN for NaN."""
    nan = x != x
    bits = _FLOOR_BITS if (x < _FLOOR or nan) else bits
    exponent = np.float32(((bits >> 23) & 0xFF) - 127)
    m = int_bits_as_float((bits & 0x7FFFFF) | 0x3F800000)  # in [1, 2)
    big = m > _SQRT2
    m = m * _HALF if big else m
    exponent = exponent + _ONE if big else exponent
    f = m - _ONE
    t = f / (_TWO + f)
    t2 = t * t
    out = exponent * _LN2 + t * (_TWO + t2 * (_C3 + t2 * (_C5 + t2 * (_C7 + t2 * _C9))))
    return x if nan else out


@numba.njit(
    parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy"
)
def blended_kernel(probabilities, ease_scores, weights, out):
    """``out = (1 − w) · z(log max(p, 1e-30)) + w · z(s)`` row by row (:func:`_blend_row`), ``w`` the row's of
    ``weights``."""
    for r in numba.prange(probabilities.shape[0]):
        _blend_row(probabilities[r], ease_scores[r], weights[r], out[r])


@numba.njit(
    parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy"
)
def top_blended_kernel(logits, ease_scores, weights, mask_indptr, mask_indices, k, idx, vals):
    """Each row's ``k`` best items by the blend of ``p = prod(sigmoid(x) for x in logits)`` with ``ease_scores``
    at the row's weight of ``weights`` (:func:`_blend_row`), best first, ties by lower item, into ``idx`` and
    ``vals``; masked items (CSR ``mask_*``) and NaN rank as -inf and take item -1 (:func:`top_of_row`)."""
    n_rows, n_cols = idx.shape[0], logits[0].shape[1]
    for r in numba.prange(n_rows):
        values = np.empty(n_cols, dtype=np.float32)
        row_product(logits, r, values, np.float32(np.nan))
        _blend_row(values, ease_scores[r], weights[r], values)
        for c in range(n_cols):
            v = values[c]
            values[c] = -np.inf if v != v else (_ZERO if v == _ZERO else v)  # -0.0 would order below 0.0
        top_of_row(values, mask_indices[mask_indptr[r] : mask_indptr[r + 1]], k, idx[r], vals[r])


@numba.njit(inline="always", boundscheck=False, fastmath={"contract", "reassoc"}, error_model="numpy")
def _blend_row(p, s, weight, o):
    """``o = (1 − weight) · z(log max(p, 1e-30)) + weight · z(s)`` over one row (``o`` may be ``p``), ``z``
    standardizing it (mean 0, standard deviation 1, sums in float64); ``s`` is not read at weight 0. NaN
    spoils the row."""
    n_cols = p.size
    bits = p.view(np.int32)
    for c in range(n_cols):  # each column is read before it is written
        o[c] = _log_floored(p[c], bits[c])
    mean = row_mean(o)
    scale = (1.0 - weight) / (math.sqrt(squared_deviations(o, mean) / n_cols) + _EPS)
    if weight == 0.0:
        for c in range(n_cols):
            o[c] = (o[c] - mean) * scale
        return
    ease_mean = row_mean(s)
    ease_scale = weight / (math.sqrt(squared_deviations(s, ease_mean) / n_cols) + _EPS)
    for c in range(n_cols):
        o[c] = (o[c] - mean) * scale + (s[c] - ease_mean) * ease_scale


@numba.njit(inline="always", fastmath={"contract", "reassoc"})
def row_mean(values):
    """The mean of a float array, summed in float64."""
    total = 0.0
    for c in range(values.size):
        total += values[c]
    return total / values.size


@numba.njit(inline="always", fastmath={"contract", "reassoc"})
def squared_deviations(values, mean):
    """The sum of ``(v − mean)²`` over a float array, in float64."""
    total = 0.0
    for c in range(values.size):
        total += (values[c] - mean) ** 2
    return total


@numba.njit(
    parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy"
)
def blended_ndcg_kernel(
    probabilities, ease_scores, weights, mask_indptr, mask_indices, holdout_indptr, holdout_indices, k, out
):
    """``out[j, r]``: row ``r``'s nDCG@k (gain ``1 / log2(rank + 1)``, ideal DCG over ``min(k, |holdout|)``
    hits, NaN for an empty holdout) of the blend at weight ``weights[j, r]`` (:func:`_blend_row`) ranked as
    :func:`top_blended_kernel` ranks it, masked items (CSR ``mask_*``) left out; the holdout (CSR ``holdout_*``)
    sorted by item within each row."""
    n_options, n_rows = weights.shape
    n_cols = probabilities.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2).astype(np.float64))
    for r in numba.prange(n_rows):
        holdout = holdout_indices[holdout_indptr[r] : holdout_indptr[r + 1]]
        if holdout.size == 0:
            out[:, r] = np.nan
            continue
        ideal = 0.0
        for m in range(min(k, holdout.size)):
            ideal += discounts[m]
        masked = mask_indices[mask_indptr[r] : mask_indptr[r + 1]]
        values = np.empty(n_cols, dtype=np.float32)
        idx = np.empty(k, dtype=np.int64)
        vals = np.empty(k, dtype=np.float32)
        for j in range(n_options):
            _blend_row(probabilities[r], ease_scores[r], weights[j, r], values)
            for c in range(n_cols):
                v = values[c]
                values[c] = -np.inf if v != v else (_ZERO if v == _ZERO else v)  # -0.0 would order below 0.0
            top_of_row(values, masked, k, idx, vals)
            dcg = 0.0
            for m in range(k):
                if idx[m] >= 0:
                    at = np.searchsorted(holdout, idx[m])
                    if at < holdout.size and holdout[at] == idx[m]:
                        dcg += discounts[m]
            out[j, r] = dcg / ideal
