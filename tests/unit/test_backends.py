"""The same model code trains on a second Keras backend (JAX), in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import keras, numpy as np
    from vasp_model.train.batches import ABBatches, fit_plan
    from vasp_model.core.config import ModelConfig
    from vasp_model.nn.losses import FocalLoss
    from vasp_model.nn.model import build_model
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    a = sp.csr_matrix((rng.random((64, 15)) < 0.2).astype(np.float32))
    b = sp.csr_matrix(((rng.random((64, 15)) < 0.2) & (a.toarray() == 0)).astype(np.float32))
    keras.utils.set_random_seed(0)
    neighbours = int(os.environ["NEIGHBOURS"]) if os.environ.get("NEIGHBOURS") else None  # a pruned kernel
    cfg = ModelConfig(
        hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1, ease_init="glorot_uniform", ease_neighbours=neighbours
    )
    model = build_model(15, cfg, seed=0, max_positives=15)
    before = keras.ops.convert_to_numpy(model.ease.trainable_weights[0]).copy()
    model.compile(optimizer=keras.optimizers.Nadam(1e-2), loss=FocalLoss(), jit_compile=True)
    hist = fit_plan(model, ABBatches([(a, b)], 16, seed=0), 3, verbose=0)
    kernel = model.ease.host_kernel()
    x = a[:4].toarray()
    out = {
        "backend": keras.backend.backend(),
        "loss": hist.history["loss"],
        "diag_max": float(np.abs(kernel.diagonal()).max()),
        "ease_moved": bool(np.any(keras.ops.convert_to_numpy(model.ease.trainable_weights[0]) != before)),
        "shape": list(keras.ops.convert_to_numpy(model(x)).shape),
    }
    if len(sys.argv) > 1:  # score a model saved by the main (TensorFlow) process
        loaded = keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False)
        out["loaded_scores"] = keras.ops.convert_to_numpy(loaded(np.load(sys.argv[2]), training=False)).tolist()
        from vasp_model.recommenders import bundle as bundle_module
        bundle_module.SPARSE_INPUT_MAX_DENSITY = 1.0  # the bundle's sparse-input path (BCOO on JAX)
        ids = np.array([str(i) for i in range(15)], dtype=object)
        sparse_scores = bundle_module.ModelBundle(loaded, ids, np.arange(15)).scores(sp.csr_matrix(np.load(sys.argv[2])))
        out["bundle_sparse_scores"] = sparse_scores.tolist()
        host = bundle_module.ModelBundle(loaded, ids, np.arange(15))  # Neural EASE in SciPy, FLVAE on JAX
        host.use_host_ease(threads=2)
        out["bundle_host_scores"] = host.scores(sp.csr_matrix(np.load(sys.argv[2]))).tolist()
    print("RESULT " + json.dumps(out))
    """
)


def _run(backend: str, *args: str, neighbours: int | None = None) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env["NEIGHBOURS"] = "" if neighbours is None else str(neighbours)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, cwd=root, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.parametrize("neighbours", [None, 4], ids=["dense", "pruned"])
def test_trains_on_jax_and_loads_a_model_saved_by_the_default_backend(tmp_path, neighbours):
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from vasp_model.core.config import ModelConfig
    from vasp_model.nn.model import build_model

    config = ModelConfig(hidden=8, latent=4, encoder_blocks=1, decoder_blocks=1, ease_neighbours=neighbours)
    model = build_model(15, config, seed=1, max_positives=15)
    if neighbours:  # targets other than the init's ring, weights other than zeros
        rng = np.random.default_rng(2)
        targets = np.stack([rng.choice(np.delete(np.arange(15), j), neighbours, replace=False) for j in range(15)])
        model.ease.set_kernel(targets, rng.normal(size=(15, neighbours)))
    x = (np.random.default_rng(1).random((3, 15)) < 0.3).astype(np.float32)
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    out = _run("jax", str(tmp_path / "m.keras"), str(tmp_path / "x.npy"), neighbours=neighbours)
    assert out["backend"] == "jax"
    assert all(np.isfinite(out["loss"])) and out["loss"][-1] < out["loss"][0]
    assert out["diag_max"] == 0.0 and out["ease_moved"]
    assert out["shape"] == [4, 15]
    np.testing.assert_allclose(np.array(out["loaded_scores"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(out["bundle_sparse_scores"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(out["bundle_host_scores"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_trains_on_torch():
    out = _run("torch")
    assert out["backend"] == "torch" and out["diag_max"] == 0.0
