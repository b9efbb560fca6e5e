"""Products of EASE-shaped item-item matrices on the host, for weights that no longer change."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vasp_model.core.column_tiles import ColumnTiles, binary_rows_product
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


# Rows of a chunk of sigmoid_product: its few [chunk, I] operands stay in a core's cache.
SIGMOID_CHUNK_ROWS = 8


def sigmoid_product(logits: list[np.ndarray], threads: int = 1) -> np.ndarray:
    """``sigmoid(logits[0]) * sigmoid(logits[1]) * ...`` (float32 arrays of one shape, all overwritten),
    returned in ``logits[0]``; computed as ``1 / prod(1 + exp(-x))`` a few rows at a time over ``threads``."""
    out = logits[0]

    def work(start: int, end: int) -> None:
        with np.errstate(over="ignore"):  # exp(-x) = inf for a very negative logit: its sigmoid is 0
            for first in range(start, end, SIGMOID_CHUNK_ROWS):
                rows = slice(first, min(first + SIGMOID_CHUNK_ROWS, end))
                for k, x in enumerate(logits):
                    x = x[rows]
                    np.negative(x, out=x)
                    np.exp(x, out=x)
                    x += 1.0
                    if k:
                        out[rows] *= x
                np.reciprocal(out[rows], out=out[rows])

    for_row_blocks(work, out.shape[0], threads)
    return out
