"""Model parallelism for catalogs too wide for one accelerator: every items-wide weight of VASP
(the Neural EASE kernel first: I² of them) sharded over the devices of a mesh with Keras'
distribution API (SPMD on the JAX backend).

The mesh has two axes: ``batch`` (data parallel: each group sees its share of a batch) and
``model`` (the item axis split over ``model_devices`` devices). A device holds 1/model_devices of
the kernel's columns and scores only its items; the first encoder Dense is split by rows (its
items of the input), so the only traffic a step adds is an all-reduce of a ``[batch, hidden]``
activation and the loss's scalars. Every other weight (I-free: hidden × hidden, latent) is
replicated. Before a fit, :func:`check_device_memory` says whether one device holds its share and,
when it does not, which split would.
"""

from __future__ import annotations

import logging
import os
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
DEVICE_MEMORY_ENV = "VASP_DEVICE_MEMORY"  # bytes one accelerator may hold (default: what the backend reports)
SUGGESTED_SPLITS = (2, 4, 8, 16, 32, 64)  # the --model-devices a refusal may suggest
log = logging.getLogger(__name__)


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


def device_memory_limit() -> tuple[int | None, str]:
    """(bytes one accelerator may hold, where the figure comes from): ``VASP_DEVICE_MEMORY`` (a size such as
    ``80g``), else the first device's ``bytes_limit`` on the JAX backend; None when training runs on the host
    (whose memory :func:`vasp_model.train.memory.check_training_memory` checks) or the backend does not say."""
    from vasp_model.train.memory import parse_bytes

    budget = os.environ.get(DEVICE_MEMORY_ENV) or None
    if budget:
        return parse_bytes(budget), DEVICE_MEMORY_ENV
    import keras

    if keras.backend.backend() != "jax":
        return None, "unknown"
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None, "the host"
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return (int(limit), f"the {device.device_kind}'s memory") if limit else (None, "unknown")


def check_device_memory(items: int, train_users: int, config, row_items: int | None = None) -> int | None:
    """The bytes one device holds at the peak of ``config``'s fit over ``items`` modelled items, split over
    ``model_devices`` devices (:func:`vasp_model.train.memory.fit_bytes`), checked against
    :func:`device_memory_limit` before anything is allocated; None when there is no device limit.
    ``ValueError`` in one line, naming the smallest ``--model-devices`` that fits, when it does not fit."""
    from vasp_model.train.memory import fit_bytes, gib

    limit, source = device_memory_limit()
    if limit is None:
        return None
    devices = config.train.model_devices
    need = fit_bytes(items, train_users, config, row_items, devices)
    if need <= limit:
        log.info(
            "device memory: estimated peak %d on each of %d device(s), limit %d (%s)", need, devices, limit, source
        )
        return need
    splits = (n for n in SUGGESTED_SPLITS if n > devices)
    fits = next(((n, b) for n in splits if (b := fit_bytes(items, train_users, config, row_items, n)) <= limit), None)
    advice = (
        f"--model-devices {fits[0]} fits ({gib(fits[1])} each)"
        if fits
        else f"no split over up to {SUGGESTED_SPLITS[-1]} devices fits"
    )
    raise ValueError(
        f"fitting {items:,} items with preset {config.preset} needs about {gib(need)} on each of {devices} "
        f"device(s), more than {source}: {gib(limit)}; {advice} ({DEVICE_MEMORY_ENV} sets the budget)"
    )
