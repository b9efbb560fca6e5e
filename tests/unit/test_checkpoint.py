"""A fit killed anywhere inside a checkpoint's save resumes from the last whole checkpoint: weights and
epoch always agree (``AtomicBackupAndRestore``)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from vasp_model.train.callbacks import AtomicBackupAndRestore

X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
Y = X @ np.arange(1.0, 5.0, dtype="float32")[:, None]


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    return model


class Record(keras.callbacks.Callback):
    """The epochs a fit ran, its weights when it began and after each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs, self.at_end_of = [], {}

    def on_train_begin(self, logs=None):
        self.at_start = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.at_end_of[epoch + 1] = self.model.get_weights()


def _kill_inside_the_third_save(stage: str, monkeypatch) -> None:
    """The process dies (KeyboardInterrupt) inside the save after epoch 3: while its weights file is written
    (half a file left), before its metadata is moved in place, or before the older weights are removed."""
    save_weights, replace, remove = keras.Model.save_weights, os.replace, os.remove

    def half_written(self, filepath, overwrite=True):
        if stage == "weights" and os.path.basename(filepath) == "epoch-3.weights.h5":
            with open(filepath, "wb") as fh:
                fh.write(b"\x89HDF\r\n\x1a\n")
            raise KeyboardInterrupt("killed")
        save_weights(self, filepath, overwrite=overwrite)

    def replace_unless_third(src, dst):
        if stage == "metadata" and "epoch-3.weights.h5" in os.listdir(os.path.dirname(dst)):
            raise KeyboardInterrupt("killed")
        replace(src, dst)

    def remove_unless_second(path):
        if stage == "cleanup" and os.path.basename(path) == "epoch-2.weights.h5":
            raise KeyboardInterrupt("killed")
        remove(path)

    monkeypatch.setattr(keras.Model, "save_weights", half_written)
    monkeypatch.setattr(os, "replace", replace_unless_third)
    monkeypatch.setattr(os, "remove", remove_unless_second)


@pytest.mark.parametrize("stage, resumes_after", [("weights", 2), ("metadata", 2), ("cleanup", 3)])
def test_a_kill_inside_a_save_resumes_from_the_last_whole_checkpoint(stage, resumes_after, tmp_path, monkeypatch):
    backup = str(tmp_path / "backup")
    killed = Record()
    with monkeypatch.context() as patched:
        _kill_inside_the_third_save(stage, patched)
        with pytest.raises(KeyboardInterrupt):
            _model().fit(X, Y, epochs=6, verbose=0, callbacks=[killed, AtomicBackupAndRestore(backup)])
    assert killed.epochs == [0, 1, 2]
    assert AtomicBackupAndRestore.recorded(backup)["epoch"] == resumes_after

    resumed = Record()  # after the backup: it sees the weights the backup loaded
    _model().fit(X, Y, epochs=6, verbose=0, callbacks=[AtomicBackupAndRestore(backup), resumed])
    assert resumed.epochs == list(range(resumes_after, 6))
    for loaded, saved in zip(resumed.at_start, killed.at_end_of[resumes_after], strict=True):
        np.testing.assert_array_equal(loaded, saved)
    assert not os.path.exists(backup)  # the finished fit removed its checkpoint


def test_each_save_leaves_one_weights_file_named_by_the_metadata(tmp_path):
    backup = str(tmp_path / "backup")

    seen = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after the backup's save (it comes first)
            seen.append((AtomicBackupAndRestore.recorded(backup), sorted(os.listdir(backup))))

    _model().fit(X, Y, epochs=3, verbose=0, callbacks=[AtomicBackupAndRestore(backup), Look()])
    for epoch, (checkpoint, files) in enumerate(seen, start=1):
        assert checkpoint["epoch"] == epoch
        assert checkpoint["weights"] == os.path.join(backup, f"epoch-{epoch}.weights.h5")
        assert files == [f"epoch-{epoch}.weights.h5", "training_metadata.json"]


def test_an_unreadable_checkpoint_is_no_checkpoint(tmp_path):
    """What an earlier version, killed while writing Keras' metadata in place, could leave."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text("")
    assert AtomicBackupAndRestore.recorded(str(backup)) is None
    assert AtomicBackupAndRestore.recorded(str(tmp_path / "none")) is None
