"""``load_archive``: a saved ``.keras`` archive loaded for inference from an extracted copy of its weights,
the same model as Keras' own ``load_model`` gives, and Keras' own way where that does not apply."""

from __future__ import annotations

import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vasp_model.core.config import ModelConfig  # noqa: E402
from vasp_model.nn.model import VASP, build_model  # noqa: E402
from vasp_model.nn.saving import WEIGHTS_MEMBER, load_archive  # noqa: E402

SMALL = ModelConfig(hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1, ease_init="glorot_uniform")


@pytest.fixture
def saved(tmp_path):
    model = build_model(11, SMALL, seed=3)
    model.compile(optimizer="nadam", loss="binary_crossentropy")  # a compiled model's archive holds its compile config
    path = str(tmp_path / "m.keras")
    model.save(path)
    return model, path


def _x(rows: int = 6, items: int = 11) -> np.ndarray:
    return (np.random.default_rng(0).random((rows, items)) < 0.3).astype("float32")


def _same(a, b) -> None:
    assert isinstance(a, VASP) and a.get_config() == b.get_config()
    assert [w.path for w in a.weights] == [w.path for w in b.weights]
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(wa), keras.ops.convert_to_numpy(wb))
    x = _x()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a(x, training=False)), keras.ops.convert_to_numpy(b(x, training=False))
    )


def test_the_archive_loads_as_keras_loads_it_uncompiled(saved):
    model, path = saved
    loaded = load_archive(path)
    _same(loaded, keras.saving.load_model(path, safe_mode=True, compile=False))
    _same(loaded, model)
    assert not loaded.compiled  # compile=False
    assert not [name for name in os.listdir(os.path.dirname(path)) if name != "m.keras"]  # nothing left beside it


def test_a_compressed_weights_member_is_loaded_by_keras(saved, tmp_path):
    model, path = saved
    deflated = str(tmp_path / "deflated.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with zipfile.ZipFile(deflated) as archive:
        assert archive.getinfo(WEIGHTS_MEMBER).compress_type == zipfile.ZIP_DEFLATED
    _same(load_archive(deflated), model)


def test_no_room_to_extract_falls_back_to_keras(saved, monkeypatch):
    model, path = saved

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extract", full)
    _same(load_archive(path), model)


def test_code_in_an_archive_is_refused_as_keras_refuses_it(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path, safe_mode=True, compile=False)
    with pytest.raises(ValueError, match="safe_mode"):
        load_archive(path)
