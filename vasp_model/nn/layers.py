"""Building blocks of VASP (``keras.ops`` only, so they run on TensorFlow, JAX and PyTorch)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vasp")
class ZeroDiagonal(keras.constraints.Constraint):
    """Forces the diagonal of a square kernel to zero (applied after every optimizer update).

    Uses a scatter of I zeros instead of multiplying by ``1 - eye(I)``, which would need an
    I×I constant (4·I² bytes).
    """

    def __call__(self, w):
        n = ops.shape(w)[0]
        idx = ops.arange(n, dtype="int32")
        indices = ops.stack([idx, idx], axis=1)
        return ops.scatter_update(w, indices, ops.zeros((n,), dtype=w.dtype))

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="vasp")
class NeuralEASE(keras.layers.Layer):
    """The shallow path: ``sigmoid(x @ W)`` with ``diag(W) = 0`` (no bias).

    The diagonal is zero at every step: the kernel is initialized with a zero diagonal, the
    ``ZeroDiagonal`` constraint re-zeroes it after every update, and the forward pass
    subtracts ``x * diag(W)`` so an item can never predict itself even from a kernel that
    was set from outside (the subtraction costs O(batch × items), not O(items²)).
    """

    def __init__(self, units: int, l2: float = 0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.l2 = float(l2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if input_shape[-1] != self.units:
            raise ValueError(f"NeuralEASE expects {self.units} input items, got shape {input_shape}")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, self.units),
            initializer=self.kernel_initializer,
            regularizer=keras.regularizers.L2(self.l2) if self.l2 > 0 else None,
            constraint=ZeroDiagonal(),
            trainable=True,
        )
        self.kernel.assign(ZeroDiagonal()(self.kernel))

    def call(self, x):
        kernel = ops.cast(self.kernel, x.dtype)
        # densify the self term: it is sparse when x is (a sparse batch of users' items)
        self_term = ops.convert_to_tensor(x * ops.diagonal(kernel), sparse=False)
        logits = ops.matmul(x, kernel) - self_term
        return ops.sigmoid(logits)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "l2": self.l2,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="vasp")
class DenseResidualStack(keras.layers.Layer):
    """``blocks`` dense-residual blocks: h_i = LayerNorm(swish(Dense(h_{i-1}) + h_1 + ... + h_{i-1}))."""

    def __init__(self, units: int, blocks: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.blocks = int(blocks)
        self.denses = [keras.layers.Dense(self.units, name=f"dense_{i}") for i in range(self.blocks)]
        self.norms = [keras.layers.LayerNormalization(name=f"norm_{i}") for i in range(self.blocks)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, norm in zip(self.denses, self.norms, strict=True):
            dense.build(shape)
            shape = (*shape[:-1], self.units)
            norm.build(shape)

    def call(self, x):
        outputs = []
        h = x
        for dense, norm in zip(self.denses, self.norms, strict=True):
            y = dense(h)
            for earlier in outputs:
                y = y + earlier
            h = norm(ops.silu(y))
            outputs.append(h)
        return h

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "blocks": self.blocks})
        return config


@keras.saving.register_keras_serializable(package="vasp")
class Sampling(keras.layers.Layer):
    """Reparameterization: ``mean + exp(log_var / 2) * eps`` in training, ``mean`` at inference."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, mean, log_var, training=None):
        if not training:
            return mean
        eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, mean_shape, log_var_shape=None):
        return mean_shape

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config
