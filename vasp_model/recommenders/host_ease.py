"""Products of EASE-shaped item-item matrices on the host, for weights that no longer change, and the
product of sigmoids that turns VASP's logits into scores (ranked in the same pass when only the top is
wanted)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vasp_model.core.column_tiles import ColumnTiles, binary_rows_product
from vasp_model.core.numba_launch import numba_launch
from vasp_model.core.row_blocks import for_row_blocks


class HostEASE:
    """An EASE-shaped product on the host, for weights that no longer change: ``x @ W - x * diag(W)``
    for 0/1 rows ``x``, over ``threads`` threads (faster than Keras' dense or sparse matmul on CPU:
    see bench/score.py): closed-form EASE's scores (its diagonal is zero), or the logits of VASP's
    Neural EASE path (the layer's ``call`` before its sigmoid).

    A dense ``kernel`` (an array, or :class:`ColumnTiles` already) is kept in column tiles and
    multiplied by :func:`binary_rows_product`; a sparse one (a pruned Neural EASE kernel) is kept as
    CSR and multiplied as CSR x CSR.
    """

    def __init__(self, kernel, threads: int = 1):
        self.sparse: sp.csr_matrix | None = None
        self.tiles: ColumnTiles | None = None
        if sp.issparse(kernel):
            self.sparse = sp.csr_matrix(kernel, dtype=np.float32)
        elif isinstance(kernel, ColumnTiles):
            self.tiles = kernel
        else:
            kernel = np.asarray(kernel)
            if kernel.ndim != 2:
                raise ValueError(f"kernel must be a square [items, items] matrix, got shape {kernel.shape}")
            self.tiles = ColumnTiles.from_dense(kernel)
        if len(self.shape) != 2 or self.shape[0] != self.shape[1]:
            raise ValueError(f"kernel must be a square [items, items] matrix, got shape {self.shape}")
        self.diagonal = np.asarray(
            self.sparse.diagonal() if self.tiles is None else self.tiles.diagonal(), dtype=np.float32
        )
        self.threads = max(1, int(threads))

    @property
    def shape(self) -> tuple[int, int]:
        return self.sparse.shape if self.tiles is None else self.tiles.shape

    @property
    def kernel(self):
        """The kernel: CSR when sparse, else a dense C-ordered copy of the tiles."""
        return self.sparse if self.tiles is None else self.tiles.to_dense()

    def __call__(self, ones: sp.csr_matrix) -> np.ndarray:
        """``[rows, I]`` float32 scores of a ``_seen`` batch (0/1, one entry per seen item)."""
        if self.tiles is not None:
            return binary_rows_product(ones, self.tiles, self.threads, self.diagonal)
        out = np.empty(ones.shape, dtype=np.float32)

        def product(start: int, end: int) -> None:
            rows = ones[start:end]
            block = out[start:end]
            block[:] = (rows @ self.sparse).toarray()
            users = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            block[users, rows.indices] -= self.diagonal[rows.indices]  # an item never predicts itself

        for_row_blocks(product, ones.shape[0], self.threads)
        return out

    def save(self, path: str) -> None:
        """Write the kernel: ``.npz`` (SciPy CSR) when sparse, else ``.npy`` written tile by tile."""
        if self.tiles is None:
            sp.save_npz(path, self.sparse)
        else:
            self.tiles.save_npy(path)


def sigmoid_product(logits: list[np.ndarray], threads: int = 1) -> np.ndarray:
    """``sigmoid(logits[0]) * sigmoid(logits[1]) * ...`` (float32 ``[rows, I]`` arrays of one shape), NaN
    where any logit is NaN, returned in ``logits[0]`` (overwritten when it is C-ordered float32, else in a
    copy of it); rows shared out over ``threads``."""
    from vasp_model.recommenders.sigmoid_product_kernel import sigmoid_product_kernel

    logits = _checked_logits(logits)
    with numba_launch(threads):
        sigmoid_product_kernel(logits, logits[0])
    return logits[0]


def top_sigmoid_product(
    logits: list[np.ndarray], mask: sp.csr_matrix | None, k: int, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``topk_from_scores(sigmoid_product(logits), mask, k, return_scores=True)`` without the ``[rows, I]``
    scores: each row's product is ranked while it is in cache. Returns ``(item_idx, scores)``, ``[rows, k]``."""
    from vasp_model.recommenders.sigmoid_product_kernel import top_sigmoid_product_kernel

    return ranked_in_one_pass(top_sigmoid_product_kernel, logits, mask, k, threads)


def ranked_in_one_pass(kernel, logits: list[np.ndarray], mask: sp.csr_matrix | None, k: int, threads: int, *args):
    """``(item_idx, scores)`` ``[rows, k]`` from a compiled ``kernel(logits, *args, mask_indptr, mask_indices,
    k, idx, vals)`` that scores and ranks each row of the batch whose ``logits`` are given."""
    logits = _checked_logits(logits)
    n_rows = logits[0].shape[0]
    mask = sp.csr_matrix(logits[0].shape, dtype=np.float32) if mask is None else sp.csr_matrix(mask)
    if mask.shape != logits[0].shape:
        raise ValueError(f"mask has shape {mask.shape}, the logits {logits[0].shape}")
    idx = np.empty((n_rows, k), dtype=np.int64)
    vals = np.empty((n_rows, k), dtype=np.float32)
    with numba_launch(threads):
        kernel(
            logits,
            *args,
            mask.indptr.astype(np.int64, copy=False),
            mask.indices.astype(np.int64, copy=False),
            k,
            idx,
            vals,
        )
    return idx, vals


def _checked_logits(logits: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The logits as a tuple of C-ordered float32 arrays of one 2-D shape (what the kernels take)."""
    arrays = tuple(np.ascontiguousarray(x, dtype=np.float32) for x in logits)
    if not arrays or arrays[0].ndim != 2 or any(x.shape != arrays[0].shape for x in arrays):
        raise ValueError(f"logits must be 2-D arrays of one shape, got {[x.shape for x in arrays]}")
    return arrays
