"""The compiled loop of :func:`vasp_model.core.column_tiles.binary_rows_product` (Numba; importing this
module imports Numba, so the product imports it on first use)."""

import numba
import numpy as np


@numba.njit(parallel=True, fastmath=True, boundscheck=False, nogil=True, cache=True)
def product_kernel(colptr, rowind, flat, n_inner, n_cols, tile, diagonal, out):
    """``out = rows @ M - rows * diagonal`` for rows given in CSC form (``colptr``, ``rowind``):
    each thread takes whole tiles and accumulates a tile of every row in its own buffer."""
    n_rows = out.shape[0]
    n_tiles = (n_cols + tile - 1) // tile
    for t in numba.prange(n_tiles):
        start = t * tile
        width = min(tile, n_cols - start)
        block = flat[n_inner * start : n_inner * (start + width)].reshape(n_inner, width)
        acc = np.zeros((n_rows, width), dtype=np.float32)
        for j in range(n_inner):
            first, last = colptr[j], colptr[j + 1]
            if first == last:
                continue
            source = block[j]
            for p in range(first, last):
                target = acc[rowind[p]]
                for c in range(width):
                    target[c] += source[c]
            if start <= j < start + width:
                for p in range(first, last):
                    acc[rowind[p], j - start] -= diagonal[j]
        for r in range(n_rows):
            out[r, start : start + width] = acc[r]
