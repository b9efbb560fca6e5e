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

# TensorFlow's C++ INFO and WARNING lines off, and oneDNN's custom ops off: TensorFlow announces them
# ("oneDNN custom operations are on", on CPUs with AVX512 or AMX) through absl before any log level
# applies, which would put lines before a command's one-line error. XLA-compiled train steps (the
# default) do not use them; TF_ENABLE_ONEDNN_OPTS=1 turns them back on.
TENSORFLOW_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_tensorflow() -> None:
    """Set :data:`TENSORFLOW_ENV` where the environment does not say otherwise (before TensorFlow loads;
    Spark's Python workers and child processes inherit it)."""
    for key, value in TENSORFLOW_ENV.items():
        os.environ.setdefault(key, value)


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


def default_exclude() -> str:
    return os.environ.get("VASP_EXCLUDE", DEFAULT_EXCLUDE)
