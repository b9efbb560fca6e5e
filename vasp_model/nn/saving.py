"""Loading a saved ``.keras`` archive for inference, its weights read from a file rather than from memory."""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile

log = logging.getLogger(__name__)

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
VASP_REGISTERED_NAME = "vasp>VASP"


def load_archive(path: str, ease_on_host: bool = False):
    """``keras.saving.load_model(path, safe_mode=True, compile=False)`` in less memory for a large model.

    Keras reads an archive's weights through a copy of them in memory when it thinks memory suffices (the
    weights held once more while they load, and HDF5 reading them through a Python file object). Here the
    weights member is extracted to a temporary file (``$TMPDIR``) first and loaded with ``load_weights``. Archives this does not apply to
    (a weights member that is compressed or missing, an extraction that fails, e.g. for want of space) are
    loaded by Keras itself.

    ``ease_on_host``: a VASP's dense Neural EASE kernel is read into column tiles for scoring on the host and
    holds no Keras variable (``VASP(ease_on_host=True)``; the archives Keras loads itself are loaded as saved).
    """
    import keras

    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        stored = WEIGHTS_MEMBER in names and archive.getinfo(WEIGHTS_MEMBER).compress_type == zipfile.ZIP_STORED
        if CONFIG_MEMBER not in names or not stored:
            return keras.saving.load_model(path, safe_mode=True, compile=False)
        config = json.loads(archive.read(CONFIG_MEMBER))
        config["compile_config"] = None  # compile=False
        if ease_on_host and config.get("registered_name") == VASP_REGISTERED_NAME:
            config["config"]["ease_on_host"] = True
        with tempfile.TemporaryDirectory(prefix="vasp-weights-") as tmp:
            try:
                weights = archive.extract(WEIGHTS_MEMBER, tmp)
            except OSError as exc:  # e.g. no room for the copy: Keras' own way
                log.debug("could not extract the weights of %s (%s): loading them through Keras", path, exc)
            else:
                model = keras.saving.deserialize_keras_object(config, safe_mode=True)
                model.load_weights(weights)
                return model
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def dense_ease_bytes(path: str, n_items: int) -> int:
    """The bytes of the dense Neural EASE kernel (float32 ``[I, I]``) of the VASP archive at ``path``: 0 for a pruned
    kernel or another model."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read(CONFIG_MEMBER))
    dense = config.get("registered_name") == VASP_REGISTERED_NAME and config["config"].get("ease_neighbours") is None
    return 4 * n_items * n_items if dense else 0
