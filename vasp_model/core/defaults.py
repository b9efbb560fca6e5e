"""Default locations of the embedded (single-machine) deployment.

``VASP_HOME`` is the project's run directory (default ``./run``): it holds the
SQLite MLflow store, MLflow artifacts, the Airflow home and Spark checkpoints.
``VASP_WAREHOUSE`` is the warehouse root (default ``./warehouse``).
``VASP_TRACKING_URI`` overrides the MLflow tracking URI.
``VASP_EXCLUDE`` is what a user's published list leaves out (``EXCLUDE_RULES``, default ``all``).
Nothing here touches the filesystem; callers create directories when they write.
"""

from __future__ import annotations

import os
import sys
import tempfile

# TensorFlow's C++ INFO and WARNING lines off, and oneDNN's custom ops off: TensorFlow announces them
# ("oneDNN custom operations are on", on CPUs with AVX512 or AMX) through absl before any log level
# applies, which would put lines before a command's one-line error. A training process turns them back on
# and keeps the announcement off stderr (tensorflow_for_training); TF_ENABLE_ONEDNN_OPTS=1 turns them on
# everywhere.
TENSORFLOW_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
# the lines TensorFlow's import prints to stderr when oneDNN's custom ops are on, before any log level applies
ONEDNN_ANNOUNCEMENT = ("WARNING: All log messages before absl::InitializeLog() is called", "oneDNN custom operations")


def quiet_tensorflow() -> None:
    """Set :data:`TENSORFLOW_ENV` where the environment does not say otherwise (before TensorFlow loads;
    Spark's Python workers and child processes inherit it)."""
    for key, value in TENSORFLOW_ENV.items():
        os.environ.setdefault(key, value)


def tensorflow_for_training() -> None:
    """In a process about to train on TensorFlow (the Keras backend) that has not loaded it yet: load it now
    with oneDNN's custom ops on (a train step without XLA, the CPU default, runs on them), keeping their
    announcement off stderr. ``VASP_TRAIN_ONEDNN=0`` leaves them as the environment says."""
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    if os.environ.get("VASP_TRAIN_ONEDNN", "1") == "0":
        return
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:  # what else the import printed (an import error's own lines too) goes back to stderr
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(part in line for part in ONEDNN_ANNOUNCEMENT):
                    print(line, file=sys.stderr)


def run_dir() -> str:
    return os.path.abspath(os.environ.get("VASP_HOME", "run"))


def default_warehouse() -> str:
    return os.environ.get("VASP_WAREHOUSE", os.path.abspath("warehouse"))


def default_tracking_uri() -> str:
    return os.environ.get("VASP_TRACKING_URI", f"sqlite:///{os.path.join(run_dir(), 'mlflow.db')}")


def default_artifact_root() -> str:
    return os.environ.get("VASP_ARTIFACT_ROOT", "file://" + os.path.join(run_dir(), "mlartifacts"))


# What a user's list leaves out: every item the user interacted with, whatever the rating (all),
# only the positives the model reads (positives), or nothing (none).
EXCLUDE_RULES = ("all", "positives", "none")
DEFAULT_EXCLUDE = "all"
# Users a bundle scores per forward pass: a batch reads the Neural EASE kernel's rows of the items it holds
# once, so wider batches read less of it per user (docs/EXPERIMENTS.md, Speed history), at [batch, items] floats
# per logits array.
SCORE_BATCH_USERS = 2048
# The Keras backend the scoring job's workers load a model on (VASP_SCORE_BACKEND): NumPy, Keras' inference-only
# backend, scores on the host without TensorFlow's import and runtime in every worker; jax, tensorflow or torch
# keep the model on an accelerator where the executors have one.
DEFAULT_SCORE_BACKEND = "numpy"
SCORE_BACKENDS = ("numpy", "jax", "tensorflow", "torch")


def score_backend() -> str:
    """The scoring workers' Keras backend: ``VASP_SCORE_BACKEND``, else :data:`DEFAULT_SCORE_BACKEND`."""
    backend = os.environ.get("VASP_SCORE_BACKEND") or DEFAULT_SCORE_BACKEND
    if backend not in SCORE_BACKENDS:
        raise ValueError(f"VASP_SCORE_BACKEND must be one of {', '.join(SCORE_BACKENDS)}, got {backend!r}")
    return backend


def default_exclude() -> str:
    return os.environ.get("VASP_EXCLUDE", DEFAULT_EXCLUDE)
