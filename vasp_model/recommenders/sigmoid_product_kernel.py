"""The compiled loops of :func:`vasp_model.recommenders.host_ease.sigmoid_product` and
:func:`~vasp_model.recommenders.host_ease.top_sigmoid_product` (Numba; importing this module imports
Numba, so they import it on first use).

``exp`` is computed here rather than by the C library, whose scalar calls keep a loop from being
vectorized: Cody-Waite range reduction, ``e^x = 2^n · e^r`` with ``|r| <= ln(2) / 2``, a degree-7
Taylor polynomial for ``e^r`` (truncation below 1e-8) and ``2^n`` built in the float's exponent bits.
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LOG2E = np.float32(1.0 / math.log(2.0))
_LN2_HI = np.float32(0.693145751953125)  # few mantissa bits: n * _LN2_HI is exact for |n| <= 128
_LN2_LO = np.float32(math.log(2.0) - 0.693145751953125)
_ROUND = np.float32(1.5 * 2**23)  # (x + _ROUND) - _ROUND rounds x to the nearest integer
# e^x >= float32's largest finite value above _EXP_MAX (2^128 is inf); below _EXP_MIN, 1 + e^x == 1.
_EXP_MAX = np.float32(89.0)
_EXP_MIN = np.float32(-87.0)
_C2, _C3, _C4, _C5, _C6, _C7 = (np.float32(1.0 / math.factorial(i)) for i in range(2, 8))
_ONE = np.float32(1.0)
_STRIDE = 8  # the top-k's threshold is read from every _STRIDE-th score of a row (as evaluation.metrics)


@intrinsic
def int_bits_as_float(typingctx, bits):
    """The float32 whose bits are the int32 ``bits``."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
def one_plus_exp_neg(v):
    """``1 + e^-v`` for a float32 ``v``: inf below -88.7, NaN for NaN."""
    x = -v
    nan = x != x
    x = _ONE if nan else x  # keeps the integer conversion below defined
    x = _EXP_MIN if x < _EXP_MIN else x
    x = _EXP_MAX if x > _EXP_MAX else x
    n = (x * _LOG2E + _ROUND) - _ROUND
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _ONE
    p = p * r + _ONE
    out = _ONE + p * int_bits_as_float((np.int32(n) + np.int32(127)) << 23)  # n = 128: exponent 255 = inf
    return v if nan else out


# Columns a row's product is computed over at a time: its operands stay in a core's L1 cache.
_BLOCK = 1024


@numba.njit(inline="always", boundscheck=False, fastmath={"contract"}, error_model="numpy")
def row_product(logits, r, values, nan_value):
    """``values = prod(sigmoid(x[r]) for x in logits)``; ``nan_value`` where any logit is NaN."""
    n_cols = values.size
    for start in range(0, n_cols, _BLOCK):
        block = values[start : min(start + _BLOCK, n_cols)]
        first = logits[0][r, start : start + block.size]
        for c in range(block.size):  # values may be logits[0]'s row: each column is read before it is written
            block[c] = one_plus_exp_neg(first[c])
        for q in range(1, len(logits)):
            row = logits[q][r, start : start + block.size]
            for c in range(block.size):
                block[c] *= one_plus_exp_neg(row[c])
        for c in range(block.size):
            value = _ONE / block[c]
            block[c] = nan_value if value != value else value


@numba.njit(parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def sigmoid_product_kernel(logits, out):
    """``out = prod(sigmoid(x) for x in logits)`` (``out`` may be ``logits[0]``), rows shared out over the
    threads; NaN where any logit is NaN."""
    for r in numba.prange(out.shape[0]):
        row_product(logits, r, out[r], np.float32(np.nan))


@numba.njit(inline="always", boundscheck=False)
def _mth_largest(values, stride, m):
    """The ``m``-th largest of ``values[::stride]`` (no NaN; at most its size), kept in an ``m``-slot buffer."""
    best = np.full(m, -np.inf, dtype=np.float32)
    low, at = best[0], 0
    for c in range(0, values.size, stride):
        if values[c] > low:
            best[at] = values[c]
            low, at = best[0], 0
            for q in range(1, m):
                if best[q] < low:
                    low, at = best[q], q
    return low


@numba.njit(inline="always", boundscheck=False)
def _best_first(values, candidates):
    """``candidates`` (ascending items) in order of ``values`` descending, ties by lower item: one sort of
    64-bit keys, the value's bits (made to order as integers, then reversed) above the item."""
    bits = values.view(np.uint32)
    keys = np.empty(candidates.size, dtype=np.uint64)
    for m in range(candidates.size):
        b = bits[candidates[m]]
        ascending = ~b if b >> np.uint32(31) else b | np.uint32(0x80000000)
        keys[m] = (np.uint64(~ascending) << np.uint64(32)) | np.uint64(candidates[m])
    keys.sort()
    return keys & np.uint64(0xFFFFFFFF)


@numba.njit(parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def top_sigmoid_product_kernel(logits, mask_indptr, mask_indices, k, idx, vals):
    """Each row's ``k`` best items by ``prod(sigmoid(x))``, best first, ties by lower item, into ``idx``
    and ``vals``; masked items (CSR ``mask_*``) and NaN rank as -inf and take item -1 (:func:`top_of_row`)."""
    n_rows, n_cols = idx.shape[0], logits[0].shape[1]
    for r in numba.prange(n_rows):
        values = np.empty(n_cols, dtype=np.float32)
        row_product(logits, r, values, np.float32(-np.inf))  # never -0.0: its bits would order below 0.0
        top_of_row(values, mask_indices[mask_indptr[r] : mask_indptr[r + 1]], k, idx[r], vals[r])


@numba.njit(inline="always", boundscheck=False)
def top_of_row(values, masked, k, idx, vals):
    """A row's ``k`` best items by ``values`` (float32, no NaN, no -0.0; overwritten), best first, ties by
    lower item, into ``idx`` and ``vals``; the ``masked`` items rank as -inf, and -inf takes item -1.

    The candidates are the items reaching a threshold read from a strided sample (about ``2k`` reach it);
    a row where fewer than ``k`` or far more reach it is sorted whole.
    """
    n_cols = values.size
    kk = min(k, n_cols)
    for p in range(masked.size):
        values[masked[p]] = -np.inf
    whole = True
    if n_cols >= 16 * k:
        sample_size = (n_cols + _STRIDE - 1) // _STRIDE
        threshold = _mth_largest(values, _STRIDE, min(sample_size, 2 * k // _STRIDE + 9))
        candidates = np.empty(32 * k, dtype=np.int64)
        count = 0
        for c in range(n_cols):
            if values[c] >= threshold:
                if count < candidates.size:
                    candidates[count] = c
                count += 1
        whole = count < kk or count > candidates.size
        candidates = candidates[:count]
    if whole:
        candidates = np.arange(n_cols)
    best = _best_first(values, candidates)
    for m in range(k):
        if m < kk:
            c = best[m]
            vals[m] = values[c]
            idx[m] = -1 if values[c] == -np.inf else c
        else:
            vals[m] = -np.inf
            idx[m] = -1
