"""Model parallelism for catalogs too wide for one accelerator: every items-wide weight of VASP
(the Neural EASE kernel first: I² of them) sharded over the devices of a mesh with Keras'
distribution API (SPMD on the JAX backend).

The mesh has two axes: ``batch`` (data parallel: each group sees its share of a batch) and
``model`` (the item axis split over ``model_devices`` devices). A device holds 1/model_devices of
the kernel's columns and scores only its items; the first encoder Dense is split by rows (its
items of the input), so the only traffic a step adds is an all-reduce of a ``[batch, hidden]``
activation and the loss's scalars. Every other weight (I-free: hidden × hidden, latent) is
replicated.
"""

from __future__ import annotations

from typing import Any

# Variable path (a regex matching the whole ``variable.path``) -> its layout over the axes (batch, model).
ITEM_SHARDED: dict[str, tuple[str | None, ...]] = {
    r"(.*/)?neural_ease/kernel": (None, "model"),  # columns: each device scores its own items
    r"(.*/)?encoder/dense_0/kernel": ("model", None),  # rows: each device reads its items of the input
    r"(.*/)?decoder_out/kernel": (None, "model"),
    r"(.*/)?decoder_out/bias": ("model",),
    r"(.*/)?latent_out/kernel": (None, "model"),
    r"(.*/)?latent_out/bias": ("model",),
}
MESH_AXES = ("batch", "model")


def item_parallel(model_devices: int, devices: list[str] | None = None) -> Any:
    """A ``keras.distribution.ModelParallel`` over ``devices`` (default: every device the backend
    lists) in data-parallel groups of ``model_devices``, each group splitting the item axis.

    Use it as ``with item_parallel(4).scope(): model = build_model(...)`` (or
    ``keras.distribution.set_distribution``): the weights are created sharded, and ``fit`` and
    ``predict`` split each batch over the ``batch`` axis.
    """
    import keras

    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if isinstance(model_devices, bool) or not isinstance(model_devices, int) or model_devices < 1:
        raise ValueError(f"model_devices must be a positive integer, got {model_devices!r}")
    if len(devices) % model_devices:
        raise ValueError(f"{len(devices)} devices cannot be split into groups of {model_devices}")
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_devices, model_devices), axis_names=MESH_AXES, devices=devices
    )
    layout = keras.distribution.LayoutMap(mesh)
    for path, axes in ITEM_SHARDED.items():
        layout[path] = axes
    return keras.distribution.ModelParallel(layout_map=layout, batch_dim_name=MESH_AXES[0])


def training_scope(model_devices: int) -> Any:
    """The scope ``vasp train`` builds, fits and scores in: :func:`item_parallel` over the first
    ``model_devices`` devices (the item axis only: every batch whole on each), or no scope for 1."""
    import contextlib

    import keras

    if model_devices == 1:
        return contextlib.nullcontext()
    if keras.backend.backend() != "jax":
        raise ValueError(f"model_devices={model_devices} needs the JAX backend (KERAS_BACKEND=jax)")
    devices = keras.distribution.list_devices()
    if len(devices) < model_devices:
        raise ValueError(f"model_devices={model_devices}, but the backend lists {len(devices)} device(s)")
    return item_parallel(model_devices, devices[:model_devices]).scope()


def weight_bytes_per_device(n_items: int, config, model_devices: int) -> int:
    """float32 bytes of VASP's weights on one device when the item axis is split ``model_devices``
    ways (the items-wide ones divided, the rest replicated); the optimizer's slots scale the same."""
    from vasp_model.train.memory import FLOAT32, dense_params

    m = config.model
    # the two output Denses (kernel column + bias per item), then Neural EASE and the first encoder Dense
    per_item_outputs = ((m.hidden if m.decoder_blocks else m.latent) + 1 + m.latent + 1) * n_items
    k = m.neighbours_for(n_items)
    pruned = k is not None  # a pruned Neural EASE kernel (I·k) is replicated
    kernel = n_items * (k if pruned else n_items)
    items_wide = n_items * m.hidden + per_item_outputs + (0 if pruned else kernel)
    replicated = dense_params(n_items, config) - n_items * m.hidden - per_item_outputs + (kernel if pruned else 0)
    return FLOAT32 * (-(-items_wide // model_devices) + replicated)
