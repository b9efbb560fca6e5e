"""The item axis sharded over several devices (Keras' distribution API), on 4 virtual XLA CPU
devices in a subprocess: the same model, the same scores, and a fit that keeps the kernel split."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from vasp_model.core.config import make_config
from vasp_model.train.memory import FLOAT32, dense_params, weight_bytes_per_device
from vasp_model.train.sharding import item_parallel

SCRIPT = textwrap.dedent(
    """
    import json
    import keras, numpy as np, scipy.sparse as sp
    from vasp_model.core.config import ModelConfig
    from vasp_model.nn.losses import FocalLoss
    from vasp_model.nn.model import build_model
    from vasp_model.train.batches import ABBatches, fit_plan
    from vasp_model.train.sharding import item_parallel

    rng = np.random.default_rng(0)
    a = sp.csr_matrix((rng.random((64, 16)) < 0.25).astype(np.float32))
    b = sp.csr_matrix(((rng.random((64, 16)) < 0.25) & (a.toarray() == 0)).astype(np.float32))
    config = ModelConfig(hidden=8, latent=4, encoder_blocks=2, decoder_blocks=1, dropout=0.0,
                         ease_init="glorot_uniform")
    x = a[:8].toarray()
    plain = build_model(16, config, seed=0)
    with item_parallel(model_devices=2).scope():  # 4 devices: 2 data-parallel groups x 2 item shards
        model = build_model(16, config, seed=1)
        model.set_weights(plain.get_weights())
        sharded_scores = np.asarray(model.predict_on_batch(x))
        model.compile(optimizer=keras.optimizers.Nadam(1e-2), loss=FocalLoss(), jit_compile=True)
        hist = fit_plan(model, ABBatches([(a, b)], 16, seed=0), 3, verbose=0)
    kernel = model.ease.kernel.value
    print("RESULT " + json.dumps({
        "devices": len(keras.distribution.list_devices()),
        "max_score_difference": float(np.abs(sharded_scores - np.asarray(plain.predict_on_batch(x))).max()),
        "shards": {v.path: sorted({tuple(s.data.shape) for s in v.value.addressable_shards}) for v in model.weights},
        "kernel_devices": len(kernel.sharding.device_set),
        "loss": hist.history["loss"],
        "diag_max": float(np.abs(np.diag(np.asarray(kernel))).max()),
    }))
    """
)


def _run(script: str, *args: str) -> dict:
    """``script`` on JAX with four virtual CPU devices, in a subprocess; its ``RESULT`` JSON line."""
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=root, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_item_axis_splits_over_virtual_devices_and_trains():
    got = _run(SCRIPT)
    assert got["devices"] == 4
    assert got["max_score_difference"] < 1e-5  # the same weights score the same, split or not
    shards = got["shards"]
    assert shards["vasp/neural_ease/kernel"] == [[16, 8]]  # each device: all rows, its half of the columns
    assert shards["vasp/encoder/dense_0/kernel"] == [[8, 8]]  # its half of the items' rows
    assert shards["vasp/decoder_out/kernel"] == [[8, 8]] and shards["vasp/latent_out/kernel"] == [[4, 8]]
    assert shards["vasp/decoder_out/bias"] == [[8]] and shards["vasp/latent_out/bias"] == [[8]]
    assert shards["vasp/encoder/dense_1/kernel"] == [[8, 8]] and shards["vasp/z_mean/kernel"] == [[8, 4]]  # whole
    assert got["kernel_devices"] == 4  # still split after the fit
    assert all(loss == loss for loss in got["loss"]) and got["loss"][-1] < got["loss"][0]
    assert got["diag_max"] == 0.0


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from vasp_model.core.config import make_config
    from vasp_model.data.features import Features
    from vasp_model.recommenders.bundle import ModelBundle
    from vasp_model.train.trainer import train

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, 300)
    X = np.zeros((300, 40), np.float32)
    for u, g in enumerate(groups):  # two taste groups: something to learn
        X[u, rng.choice(np.arange(g * 20, g * 20 + 20), 8, replace=False)] = 1
    features = Features.from_matrix(X, n_heldout_users=30, n_copies=2, seed=0)
    train_overrides = {"epochs": (3,), "learning_rates": (1e-2,), "model_devices": 4}
    config = make_config("tiny", {"ease_init": "closed_form"}, train_overrides, env={})
    result = train(features, config, verbose=0)
    kernel = result.bundle.model.ease.kernel.value
    result.bundle.save(sys.argv[1])
    loaded = ModelBundle.load(sys.argv[1])
    fold_in = features.test.fold_in
    from vasp_model.train.sharding import training_scope
    try:
        training_scope(8)
        refusal = None
    except ValueError as error:
        refusal = str(error)
    print("RESULT " + json.dumps({
        "refusal": refusal,
        "kernel_shards": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
        "kernel_devices": len(kernel.sharding.device_set),
        "test": {name: m["ndcg@100"] for name, m in result.metrics["test"].items()},
        "saved_scores_match": bool(np.allclose(loaded.scores(fold_in), result.bundle.scores(fold_in), atol=1e-5)),
    }))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_vasp_train_with_model_devices_fits_scores_and_saves_a_split_model(tmp_path):
    got = _run(TRAIN_SCRIPT, str(tmp_path / "bundle"))
    assert got["kernel_devices"] == 4 and got["kernel_shards"] == [[40, 10]]  # 40 items over 4 devices
    assert got["test"]["vasp"] > got["test"]["popularity"]
    assert got["saved_scores_match"]  # the saved bundle is whole: it loads and scores on one device
    assert got["refusal"] == "model_devices=8, but the backend lists 4 device(s)"


def test_model_devices_needs_jax_and_a_positive_count():
    import keras

    from vasp_model.train.sharding import training_scope

    if keras.backend.backend() != "jax":  # the default: TensorFlow
        with pytest.raises(ValueError, match="needs the JAX backend"):
            training_scope(2)
    with pytest.raises(ValueError, match="model_devices must be > 0"):
        make_config("tiny", train_overrides={"model_devices": 0}, env={})


def test_item_parallel_refuses_a_mesh_that_does_not_divide():
    with pytest.raises(ValueError, match="6 devices cannot be split into groups of 4"):
        item_parallel(4, devices=[f"cpu:{i}" for i in range(6)])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="model_devices"):
            item_parallel(bad, devices=["cpu:0", "cpu:1"])


def test_weight_bytes_per_device_by_hand():
    config = make_config("cpu", model_overrides={"hidden": 8, "latent": 4, "encoder_blocks": 2, "decoder_blocks": 1})
    # 16 items: Neural EASE 256 + first Dense 128 + two output Denses (8 + 1 + 4 + 1) per item = 224
    # are split; the other 592 - 128 - 224 = 240 weights are on every device
    assert dense_params(16, config) == 592
    assert weight_bytes_per_device(16, config, 1) == FLOAT32 * (256 + 592)
    assert weight_bytes_per_device(16, config, 2) == FLOAT32 * (608 // 2 + 240)
    assert weight_bytes_per_device(16, config, 4) == FLOAT32 * (608 // 4 + 240)


GOWALLA = (40_981, 29_858)  # items, train users


def test_fit_bytes_on_one_device_is_the_host_estimates_fit_and_splitting_divides_the_item_axis():
    from vasp_model.train.memory import RUNTIME_BYTES, fit_bytes, training_memory

    config = make_config("paper", train_overrides={"jit_compile": False}, env={})
    items, users = GOWALLA
    assert fit_bytes(items, users, config) == training_memory(items, users, config).phases["fit"] - RUNTIME_BYTES
    per_device = [fit_bytes(items, users, config, model_devices=n) for n in (1, 2, 4, 8)]
    assert per_device == sorted(per_device, reverse=True)
    # the dense kernel and its state are most of it: 8 devices hold a little more than an eighth each
    assert per_device[0] / 8 < per_device[3] < per_device[0] / 6


def test_a_fit_too_wide_for_one_device_is_refused_naming_the_split_that_fits(monkeypatch):
    from vasp_model.train.memory import fit_bytes, gib
    from vasp_model.train.sharding import check_device_memory

    config = make_config("paper", env={})
    items, users = GOWALLA
    limit = (fit_bytes(items, users, config, model_devices=4) + fit_bytes(items, users, config, model_devices=2)) // 2
    monkeypatch.setenv("VASP_DEVICE_MEMORY", str(limit))
    with pytest.raises(ValueError) as refused:
        check_device_memory(items, users, config)
    line = str(refused.value)
    assert line.startswith(f"fitting 40,981 items with preset paper needs about {gib(fit_bytes(items, users, config))}")
    assert f"more than VASP_DEVICE_MEMORY: {gib(limit)}" in line and "\n" not in line
    assert f"--model-devices 4 fits ({gib(fit_bytes(items, users, config, model_devices=4))} each)" in line
    split = make_config("paper", train_overrides={"model_devices": 4}, env={})
    assert check_device_memory(items, users, split) == fit_bytes(items, users, config, model_devices=4)
    monkeypatch.setenv("VASP_DEVICE_MEMORY", "1g")
    with pytest.raises(ValueError, match="no split over up to 64 devices fits"):
        check_device_memory(items, users, config)


def test_training_on_the_host_has_no_device_limit(monkeypatch):
    import keras

    from vasp_model.train.sharding import device_memory_limit

    monkeypatch.delenv("VASP_DEVICE_MEMORY", raising=False)
    if keras.backend.backend() != "jax":  # the default, TensorFlow, on this machine's CPU
        assert device_memory_limit() == (None, "unknown")
    monkeypatch.setenv("VASP_DEVICE_MEMORY", "80g")
    assert device_memory_limit() == (80 * 2**30, "VASP_DEVICE_MEMORY")
