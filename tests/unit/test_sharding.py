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
from vasp_model.train.memory import FLOAT32, dense_params
from vasp_model.train.sharding import item_parallel, weight_bytes_per_device

SCRIPT = textwrap.dedent(
    """
    import json
    import keras, numpy as np, scipy.sparse as sp
    from vasp_model.core.config import ModelConfig
    from vasp_model.nn.losses import FocalLoss
    from vasp_model.nn.model import build_model
    from vasp_model.train.batches import ABBatches, make_dataset
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
        hist = model.fit(make_dataset(ABBatches([(a, b)], 16, seed=0)), epochs=3, verbose=0)
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


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_item_axis_splits_over_virtual_devices_and_trains():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])
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
