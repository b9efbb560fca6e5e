"""Building blocks of VASP (``keras.ops`` only, so they run on TensorFlow, JAX and PyTorch)."""

from __future__ import annotations

import keras
import numpy as np
import scipy.sparse as sp
from keras import ops

from vasp_model.core.column_tiles import IO_BLOCK_BYTES, ColumnTiles


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
        # a variable's value, not the variable: a backend's scatter may write into what it is given (NumPy's does)
        return ops.scatter_update(ops.convert_to_tensor(w), indices, ops.zeros((n,), dtype=w.dtype))

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

    def host_kernel(self) -> ColumnTiles:
        """The ``[I, I]`` kernel in column tiles (for scoring on the host), copied a tile at a time."""
        return ColumnTiles.from_columns(
            lambda start, end: ops.convert_to_numpy(self.kernel[:, start:end]), (self.units, self.units)
        )

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
class HostNeuralEASE(NeuralEASE):
    """``NeuralEASE`` loaded for scoring on the host only (``VASP(ease_on_host=True)``): no Keras variable; the
    saved kernel is read a block of rows at a time straight into column tiles (:meth:`host_kernel`), so a
    scoring process holds the I×I kernel once rather than twice, and never fills it with random values first.
    Keras cannot run it; saving writes the kernel back as ``NeuralEASE`` saves it."""

    read_block_bytes = IO_BLOCK_BYTES  # whole rows of the saved kernel read at a time

    def build(self, input_shape):
        if input_shape[-1] != self.units:
            raise ValueError(f"NeuralEASE expects {self.units} input items, got shape {input_shape}")
        self.tiles: ColumnTiles | None = None
        self.built = True

    def load_own_variables(self, store):
        if list(store.keys()) != ["0"]:
            raise ValueError(f"{self.name} expects the saved kernel alone, found the entries {list(store.keys())}")
        shape = (self.units, self.units)
        dataset = _h5_dataset(store, "0")
        kernel = np.asarray(store["0"], dtype=np.float32) if dataset is None else None  # not Keras' HDF5 store: whole
        found = dataset.shape if dataset is not None else kernel.shape
        if found != shape:
            raise ValueError(f"{self.name}'s saved kernel has shape {found}, expected {shape}")
        if kernel is not None:
            self.tiles = ColumnTiles.from_dense(kernel)
        else:
            self.tiles = ColumnTiles.from_row_blocks(
                shape,
                lambda first, rows: dataset.read_direct(rows, np.s_[first : first + rows.shape[0]]),
                block_bytes=self.read_block_bytes,
            )

    def save_own_variables(self, store):
        store["0"] = self.host_kernel().to_dense()

    def host_kernel(self) -> ColumnTiles:
        """The kernel's column tiles, as loaded (not a copy)."""
        if self.tiles is None:
            raise ValueError(f"{self.name} has no kernel: it is set by loading saved weights")
        return self.tiles

    def call(self, x):
        raise RuntimeError(
            f"{self.name} was loaded for scoring on the host (ModelBundle.use_host_ease) and Keras cannot run it: "
            "load the bundle with host_ease=False to run it through Keras"
        )


def _h5_dataset(store, key: str):
    """The HDF5 dataset behind ``store[key]`` when ``store`` is Keras' HDF5 weights store (read in place, a block at
    a time), else None (``store[key]`` then reads the whole array)."""
    group = getattr(store, "_h5_entry_group", None)
    dataset = group.get(key) if group is not None and hasattr(group, "get") else None
    return dataset if hasattr(dataset, "read_direct") else None


@keras.saving.register_keras_serializable(package="vasp")
class PrunedNeuralEASE(NeuralEASE):
    """The shallow path with a pruned kernel (``NeuralEASE``'s config and output, another kernel), for
    catalogs whose I×I kernel does not fit: each source item ``j`` keeps ``neighbours`` target items,
    ``W[j, targets[j, m]] = values[j, m]``, never itself.

    ``values`` [I, k] is trained, ``targets`` [I, k] (int32) is set once (:meth:`set_kernel`, e.g. from
    the pruned closed-form EASE). A row's logits sum the kernel rows of its items: the forward pass reads
    the row's ``max_positives`` largest entries (``top_k``) and scatter-adds their ``k`` weights,
    O(batch × max_positives × k) work and memory instead of O(batch × I²). ``vasp train`` sets
    ``max_positives`` to the widest row it trains and measures on; a wider 0/1 row scored through Keras
    is read through ``max_positives`` of its items (scoring on the host, :meth:`host_kernel`, reads all).

    With ``batch_positives``, a batch with at most that many nonzeros is read through exactly those
    (O(batch_positives × k), however wide its widest row), any other batch as above: the same logits.
    """

    def __init__(
        self,
        units: int,
        neighbours: int,
        max_positives: int,
        l2: float = 0.0,
        kernel_initializer="zeros",
        batch_positives: int | None = None,
        **kwargs,
    ):
        super().__init__(units, l2=l2, kernel_initializer=kernel_initializer, **kwargs)
        if not 0 < int(neighbours) < self.units:
            raise ValueError(f"neighbours must be in [1, {self.units - 1}] for {self.units} items, got {neighbours!r}")
        if int(max_positives) < 1:
            raise ValueError(f"max_positives must be >= 1, got {max_positives!r}")
        if batch_positives is not None and int(batch_positives) < 1:
            raise ValueError(f"batch_positives must be >= 1, got {batch_positives!r}")
        self.neighbours = int(neighbours)
        self.max_positives = min(int(max_positives), self.units)
        self.batch_positives = None if batch_positives is None else int(batch_positives)

    def build(self, input_shape):
        if input_shape[-1] != self.units:
            raise ValueError(f"PrunedNeuralEASE expects {self.units} input items, got shape {input_shape}")
        shape = (self.units, self.neighbours)
        self.values = self.add_weight(
            name="values",
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=keras.regularizers.L2(self.l2) if self.l2 > 0 else None,
            trainable=True,
        )
        # until set_kernel: the k items after each item (never itself)
        ring = (
            ops.arange(self.units, dtype="int32")[:, None] + ops.arange(1, self.neighbours + 1, dtype="int32")
        ) % self.units
        self.targets = self.add_weight(name="targets", shape=shape, dtype="int32", initializer="zeros", trainable=False)
        self.targets.assign(ring)

    def set_kernel(self, targets, values) -> None:
        """Set the kernel from ``[I, k]`` arrays of target items and weights (no item may target itself)."""
        targets = np.asarray(targets)
        values = np.asarray(values, dtype="float32")
        shape = (self.units, self.neighbours)
        if targets.shape != shape or values.shape != shape:
            raise ValueError(f"targets and values must have shape {shape}, got {targets.shape} and {values.shape}")
        if targets.min() < 0 or targets.max() >= self.units:
            raise ValueError(f"targets must be item indices in [0, {self.units})")
        if np.any(targets == np.arange(self.units)[:, None]):
            raise ValueError("an item must not target itself (the kernel's diagonal is zero)")
        self.targets.assign(targets.astype("int32"))
        self.values.assign(values)

    def host_kernel(self) -> sp.csr_matrix:
        """The kernel as an ``[I, I]`` float32 CSR matrix (for scoring on the host)."""
        targets = ops.convert_to_numpy(self.targets).ravel()
        values = ops.convert_to_numpy(self.values).astype(np.float32).ravel()
        indptr = np.arange(0, targets.size + 1, self.neighbours, dtype=np.int64)
        return sp.csr_matrix((values, targets, indptr), shape=(self.units, self.units))

    def call(self, x):
        x = ops.convert_to_tensor(x, sparse=False)
        if self.batch_positives is None:
            return ops.sigmoid(self._row_logits(x))
        present = ops.not_equal(x, 0)
        fits = ops.sum(ops.cast(present, "int32")) <= self.batch_positives
        return ops.sigmoid(ops.cond(fits, lambda: self._batch_logits(x, present), lambda: self._row_logits(x)))

    def _row_logits(self, x):
        """Logits ``[B, I]`` from each row's ``max_positives`` largest entries."""
        weight, items = ops.top_k(x, self.max_positives, sorted=False)  # [B, P]: a row's items (weight 0: padding)
        rows = ops.shape(x)[0]
        return self._scatter(items, weight, ops.arange(rows, dtype="int32")[:, None], rows)

    def _batch_logits(self, x, present):
        """Logits ``[B, I]`` from the batch's nonzeros (``present``; at most ``batch_positives`` of them)."""
        rows, flat, present = ops.shape(x)[0], ops.reshape(x, (-1,)), ops.reshape(present, (-1,))
        slot = ops.where(present, ops.cumsum(ops.cast(present, "int32")) - 1, self.batch_positives)  # overflow slot
        size = ops.shape(flat)[0]
        # each nonzero's flat index + 1 into its slot (0: a slot left empty; the overflow slot sums zeros)
        entries = ops.scatter(
            ops.expand_dims(slot, 1),
            ops.where(present, ops.arange(1, size + 1, dtype="int32"), 0),
            (self.batch_positives + 1,),
        )[: self.batch_positives]
        index = ops.maximum(entries - 1, 0)
        value = ops.take(flat, index)
        weight = ops.where(entries > 0, value, ops.zeros_like(value))
        return self._scatter(index % self.units, weight, index // self.units, rows)

    def _scatter(self, items, weight, row, rows):
        """Logits ``[rows, I]``: ``weight`` times the kernel row of each of ``items`` (any shape), added
        into row ``row`` (broadcast against ``items``)."""
        contributions = ops.take(ops.cast(self.values, weight.dtype), items, axis=0) * weight[..., None]
        cells = ops.take(self.targets, items, axis=0) + (row * self.units)[..., None]
        logits = ops.segment_sum(
            ops.reshape(contributions, (-1,)), ops.reshape(cells, (-1,)), num_segments=rows * self.units
        )
        return ops.reshape(logits, (rows, self.units))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "neighbours": self.neighbours,
                "max_positives": self.max_positives,
                "batch_positives": self.batch_positives,
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

    def call(self, x, input_product: bool = False):
        """``input_product``: ``x`` is already the first block's kernel product (``x @ kernel``, computed
        elsewhere, e.g. sparse on the host); only its bias is added."""
        outputs = []
        h = x
        for dense, norm in zip(self.denses, self.norms, strict=True):
            y = h + dense.bias if input_product and not outputs else dense(h)
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
