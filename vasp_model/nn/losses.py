"""VASP's loss: focal loss summed over items, plus the VAE's KL term.

Keras 3's ``BinaryFocalCrossentropy`` averages over the last axis; the reference sums the
per-item focal terms of a user (a multi-label problem over the whole catalog), so this
module implements the sum directly. The KL term is added by the model (``add_loss``)
as the KL divergence of N(mean, exp(log_var)) from N(0, 1), averaged over latent dimensions
and over the batch.
"""

from __future__ import annotations

import keras
from keras import ops

EPSILON = 1e-7


def focal_terms(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Per-item focal loss (no reduction) for probabilities ``y_pred`` and labels ``y_true``: 1 positive,
    0 negative, -1 neither (an item of the row's own input, left out: ``ignore_input_items``).

    FL = -α (1-p)^γ y log p - (1-α) p^γ (1-y) log(1-p) on 0/1 labels
    """
    y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    y_true = ops.cast(y_true, "float32")
    # a label of -1 is neither: 1 - |y| is the negative's weight (1 - y on 0/1 labels)
    positive = -alpha * ops.power(1.0 - y_pred, gamma) * ops.maximum(y_true, 0.0) * ops.log(y_pred)
    negative = -(1.0 - alpha) * ops.power(y_pred, gamma) * (1.0 - ops.abs(y_true)) * ops.log(1.0 - y_pred)
    return positive + negative


def kl_divergence(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, 1)) per example, averaged over latent dimensions."""
    mean = ops.cast(mean, "float32")
    log_var = ops.cast(log_var, "float32")
    return -0.5 * ops.mean(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


@keras.saving.register_keras_serializable(package="vasp")
class FocalLoss(keras.losses.Loss):
    """Focal loss SUMMED over items (last axis), then reduced over the batch (mean by default)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return ops.sum(focal_terms(y_true, y_pred, self.alpha, self.gamma), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "gamma": self.gamma})
        return config
