"""Products of EASE-shaped item-item matrices on the host, for weights that no longer change."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vasp_model.core.row_blocks import for_row_blocks


class HostEASE:
    """An EASE-shaped product in NumPy/SciPy, for weights that no longer change: ``x @ W - x * diag(W)``
    for 0/1 rows ``x``, as CSR x dense products over ``threads`` (faster than Keras' dense or sparse
    matmul on CPU: see bench/score.py). Through a sigmoid, VASP's Neural EASE path (the layer's
    ``call``); with ``logits``, as is: closed-form EASE's scores (its diagonal is zero). A sparse
    ``kernel`` (a pruned Neural EASE kernel) is kept as CSR and multiplied as CSR x CSR.
    """

    def __init__(self, kernel, threads: int = 1, logits: bool = False):
        if sp.issparse(kernel):
            self.kernel = sp.csr_matrix(kernel, dtype=np.float32)
        else:
            self.kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        if self.kernel.ndim != 2 or self.kernel.shape[0] != self.kernel.shape[1]:
            raise ValueError(f"kernel must be a square [items, items] matrix, got shape {self.kernel.shape}")
        self.diagonal = np.asarray(self.kernel.diagonal(), dtype=np.float32)
        self.threads = max(1, int(threads))
        self.logits = logits

    def __call__(self, ones: sp.csr_matrix) -> np.ndarray:
        """``[rows, I]`` scores (probabilities unless ``logits``) for a ``_seen`` batch (0/1, one entry per seen item)."""
        from scipy.special import expit

        out = np.empty(ones.shape, dtype=np.float32)

        def product(start: int, end: int) -> None:
            rows = ones[start:end]
            product = rows @ self.kernel
            block = out[start:end]
            block[:] = product.toarray() if sp.issparse(product) else product
            users = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            block[users, rows.indices] -= self.diagonal[rows.indices]  # an item never predicts itself
            if not self.logits:
                expit(block, out=block)

        for_row_blocks(product, ones.shape[0], self.threads)
        return out
