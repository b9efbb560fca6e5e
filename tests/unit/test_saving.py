"""``load_archive``: a saved ``.keras`` archive loaded for inference from an extracted copy of its weights,
the same model as Keras' own ``load_model`` gives, and Keras' own way where that does not apply."""

from __future__ import annotations

import dataclasses
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


def _deflated(path: str, copy: str) -> str:
    """A copy of the archive at ``path`` with every member compressed."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return copy


def test_the_archive_loads_as_keras_loads_it_uncompiled(saved):
    model, path = saved
    loaded = load_archive(path)
    _same(loaded, keras.saving.load_model(path, safe_mode=True, compile=False))
    _same(loaded, model)
    assert not loaded.compiled  # compile=False
    assert not [name for name in os.listdir(os.path.dirname(path)) if name != "m.keras"]  # nothing left beside it


def test_a_compressed_weights_member_is_loaded_by_keras(saved, tmp_path):
    model, path = saved
    deflated = _deflated(path, str(tmp_path / "deflated.keras"))
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


@pytest.mark.parametrize("read_block_bytes", [4 * 11, 3 * 4 * 11, 10**9])  # a row, 3 of the 11 rows, every row
def test_ease_on_host_reads_the_kernel_into_tiles_and_keeps_no_variable(saved, tmp_path, monkeypatch, read_block_bytes):
    """For scoring on the host, a VASP's dense Neural EASE kernel goes from the archive straight into column tiles
    (a block of rows at a time): no Keras variable holds it, Keras refuses to run it, and saving writes it back."""
    from vasp_model.core.column_tiles import ColumnTiles
    from vasp_model.nn.layers import HostNeuralEASE

    model, path = saved
    monkeypatch.setattr(HostNeuralEASE, "read_block_bytes", read_block_bytes)
    monkeypatch.setattr(ColumnTiles, "__init__", _narrow_tiles(ColumnTiles.__init__))  # 11 items: three tiles
    loaded = load_archive(path, ease_on_host=True)
    assert type(loaded.ease) is HostNeuralEASE and loaded.ease.weights == []
    assert loaded.get_config() == model.get_config()  # saved as the VASP it was
    kernel = keras.ops.convert_to_numpy(model.ease.kernel)
    assert len(loaded.ease.host_kernel().bounds()) == 3
    np.testing.assert_array_equal(loaded.ease.host_kernel().to_dense(), kernel)
    others = [w for w in model.weights if w is not model.ease.kernel]
    assert [w.path for w in loaded.weights] == [w.path for w in others]
    for wa, wb in zip(loaded.weights, others, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(wa), keras.ops.convert_to_numpy(wb))
    with pytest.raises(RuntimeError, match="host_ease=False"):
        loaded(_x(), training=False)
    resaved = str(tmp_path / "resaved.keras")
    loaded.save(resaved)
    _same(load_archive(resaved), model)


def _narrow_tiles(init):
    def narrow(self, flat, shape, tile=4):
        init(self, flat, shape, 4)

    return narrow


def test_ease_on_host_leaves_other_archives_as_saved(saved, tmp_path):
    """A pruned kernel (small already), another model, and an archive Keras loads itself load as saved."""
    from vasp_model.nn.layers import PrunedNeuralEASE

    pruned = build_model(11, dataclasses.replace(SMALL, ease_neighbours=3), seed=3)
    pruned.save(str(tmp_path / "pruned.keras"))
    assert type(load_archive(str(tmp_path / "pruned.keras"), ease_on_host=True).ease) is PrunedNeuralEASE
    inputs = keras.Input((3,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    other.save(str(tmp_path / "other.keras"))
    assert isinstance(load_archive(str(tmp_path / "other.keras"), ease_on_host=True), keras.Model)
    model, path = saved
    deflated = _deflated(path, str(tmp_path / "deflated.keras"))
    _same(load_archive(deflated, ease_on_host=True), model)
