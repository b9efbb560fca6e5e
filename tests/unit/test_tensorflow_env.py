"""How a process loads TensorFlow: quiet everywhere, oneDNN's custom ops on for training without a stray line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from vasp_model.core import defaults
defaults.quiet_tensorflow()
if sys.argv[1] == "train":
    defaults.tensorflow_for_training()
import keras  # noqa: F401  (the backend loads here where nothing loaded it before)
loaded = "tensorflow" in sys.modules
onednn = None
if loaded:
    from tensorflow.python.util import _pywrap_util_port
    onednn = bool(_pywrap_util_port.IsMklEnabled())
print(json.dumps({"tensorflow": loaded, "onednn": onednn}))
"""


def _probe(mode: str, **env: str) -> tuple[dict, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "VASP_TRAIN_ONEDNN")}
    environ.update({"KERAS_BACKEND": "tensorflow", **env})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=environ, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize(
    ("mode", "env", "onednn"),
    [
        ("other", {}, False),  # every other command: off, and nothing announced
        ("train", {}, True),  # a training process: on, and its announcement kept off stderr
        ("train", {"VASP_TRAIN_ONEDNN": "0"}, False),  # the opt-out
    ],
)
def test_onednn_is_on_for_training_only_and_stderr_stays_clean(mode, env, onednn):
    state, stderr = _probe(mode, **env)
    assert state == {"tensorflow": True, "onednn": onednn}
    assert "oneDNN" not in stderr
    assert "absl::InitializeLog" not in stderr


def test_training_on_another_backend_does_not_load_tensorflow():
    state, _ = _probe("train", KERAS_BACKEND="jax")
    assert state == {"tensorflow": False, "onednn": None}
