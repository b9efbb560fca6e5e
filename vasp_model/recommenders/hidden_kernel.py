"""The compiled loop of :class:`vasp_model.recommenders.host_hidden.HostHidden` (Numba; importing this module
imports Numba, so the host path imports it on first use). The activation's ``e^x`` is the vectorized one of
:mod:`vasp_model.recommenders.sigmoid_product_kernel`."""

import math

import numba
import numpy as np

from vasp_model.recommenders.blend_kernel import row_mean, squared_deviations
from vasp_model.recommenders.sigmoid_product_kernel import one_plus_exp_neg

_ONE = np.float32(1.0)


@numba.njit(
    parallel=True, boundscheck=False, nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy"
)
def dense_block_kernel(y, outputs, block, gamma, beta, epsilon):
    """``outputs[block] = LayerNorm(silu(y + outputs[0] + … + outputs[block − 1]))`` row by row (``y``: the block's
    dense layer's output, overwritten), the normalization's mean and variance over the row summed in float64."""
    n_rows, n_cols = y.shape
    for r in numba.prange(n_rows):
        row, out = y[r], outputs[block, r]
        for q in range(block):
            earlier = outputs[q, r]
            for c in range(n_cols):
                row[c] += earlier[c]
        for c in range(n_cols):
            v = row[c]
            out[c] = v * (_ONE / one_plus_exp_neg(v))
        mean = row_mean(out)
        inv = 1.0 / math.sqrt(squared_deviations(out, mean) / n_cols + epsilon)
        for c in range(n_cols):
            scale = inv * gamma[c]
            out[c] = np.float32(out[c] * scale + (beta[c] - mean * scale))
