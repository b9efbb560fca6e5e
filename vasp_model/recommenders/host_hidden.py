"""The FLVAE's hidden layers at inference on the host: NumPy's matrix products and one compiled pass per
block for the residual sums, the activation and the layer normalization, rows shared out over the threads
(what Keras runs as a dozen element-wise operations, on TensorFlow or NumPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vasp_model.core.numba_launch import numba_launch


class HostHidden:
    """``[d, z]`` from the first product of a batch (the normalized input times the first encoder kernel): the
    encoder's dense-residual blocks, the latent mean, the decoder's blocks (none: ``d`` is ``z``), from the
    weights of :meth:`vasp_model.nn.model.VASP.hidden_weights`, over ``threads`` threads."""

    def __init__(self, weights: dict[str, Any], threads: int = 1):
        if not weights["encoder"]:
            raise ValueError("the FLVAE's encoder has no block")
        self.encoder = weights["encoder"]
        self.z_mean = weights["z_mean"]
        self.decoder = weights["decoder"]
        self.threads = max(1, int(threads))

    def __call__(self, product: np.ndarray) -> list[np.ndarray]:
        """``[d, z]`` (float32 ``[rows, width]``) of a batch whose first product is ``product``."""
        h = self._stack(np.array(product, dtype=np.float32), self.encoder, input_product=True)
        kernel, bias = self.z_mean
        z = np.matmul(h, kernel)
        z += bias
        d = self._stack(z, self.decoder, input_product=False) if self.decoder else z
        return [d, z]

    def _stack(self, x: np.ndarray, blocks, input_product: bool) -> np.ndarray:
        """The last block's output of dense-residual ``blocks`` on ``x`` (``input_product``: ``x`` is the first
        block's kernel product already, its bias still to add)."""
        from vasp_model.recommenders.hidden_kernel import dense_block_kernel

        outputs = np.empty((len(blocks), x.shape[0], blocks[0][0].shape[1]), dtype=np.float32)
        h = x
        for block, (kernel, bias, gamma, beta, epsilon) in enumerate(blocks):
            y = h if input_product and block == 0 else np.matmul(h, kernel)
            y += bias
            with numba_launch(self.threads):
                dense_block_kernel(y, outputs, block, gamma, beta, float(epsilon))
            h = outputs[block]
        return h
