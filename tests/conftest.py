"""Shared fixtures. The SparkSession is session-scoped and lazy: only tests that ask for
``spark`` start it (one JVM per test process); everything else never touches Spark. ML-1M
goes through one ``cpu``-preset night per run (``ml1m_night``: one build, one training), which
every ML-1M test reads (its features: ``ml1m_features``)."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["shared_data", "pytester"]  # shared_data: the `realdata` marker and its rule


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] SparkSession for every test that needs Spark (small shuffles, quiet logs)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers must use this venv
    from vasp_jobs.common.spark import get_session, spark_config

    config = spark_config(
        {
            "spark_master": "local[2]",
            "spark_app_name": "vasp-tests",
            "spark_shuffle_partitions": 4,
            "spark_driver_memory": "2g",
            "spark_checkpoint_dir": str(tmp_path_factory.mktemp("spark-checkpoints")),
            "spark_sql_warehouse": str(tmp_path_factory.mktemp("spark-warehouse")),
        },
        env={},
    )
    session = get_session(config)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ml1m_night(tmp_path_factory) -> dict:
    """ML-1M through the README's own command, ``vasp run --preset cpu``, in a fresh process with the
    production gate and defaults (no ``VASP_*`` from this environment): ``{"warehouse", "date"}``.

    The fresh process trains on the product's default Keras backend, TensorFlow (``VASP_QUALITY_BACKEND``
    picks another, e.g. ``jax``). ``VASP_QUALITY_TIMEOUT`` (seconds, default 3600) bounds the run. Under
    ``make test``'s worker processes the night runs once: the first worker to ask runs it, the others wait
    for it and read it.
    """
    from shared_data import ML1M, require_data

    require_data(ML1M)
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's own folder, above each worker's
    tmp, date = shared / "ml1m-night", "2026-03-10"
    with open(shared / "ml1m-night.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while another worker's night runs
        outcome = tmp / "outcome.txt"  # empty: the night succeeded
        if not tmp.exists():
            tmp.mkdir()
            outcome.write_text(_ml1m_night(tmp, date))
        if not outcome.exists():
            pytest.fail("the worker that ran the ML-1M night died before it finished", pytrace=False)
        if error := outcome.read_text():
            pytest.fail(error, pytrace=False)
    return {"warehouse": tmp / "warehouse", "date": date}


def _ml1m_night(tmp: Path, date: str) -> str:
    """Run the ML-1M night under ``tmp``; returns what went wrong ("" if nothing)."""
    from night_process import inherited_environment
    from shared_data import ML1M, data_path

    env = inherited_environment("VASP_")
    env.update(
        VASP_HOME=str(tmp / "run"),
        VASP_WAREHOUSE=str(tmp / "warehouse"),
        VASP_TRACKING_URI=f"sqlite:///{tmp / 'run' / 'mlflow.db'}",
        VASP_ARTIFACT_ROOT=f"file://{tmp / 'run' / 'mlartifacts'}",
        KERAS_BACKEND=os.environ.get("VASP_QUALITY_BACKEND", "tensorflow"),
    )
    vasp = Path(sys.executable).with_name("vasp")
    timeout = int(os.environ.get("VASP_QUALITY_TIMEOUT", "3600"))
    try:
        proc = subprocess.run(
            [str(vasp), "run", "--date", date, "--input", str(data_path(ML1M)), "--preset", "cpu"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"vasp run on ML-1M ran past VASP_QUALITY_TIMEOUT ({timeout} s)"
    if proc.returncode != 0:
        return f"vasp run on ML-1M failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return ""


@pytest.fixture(scope="session")
def ml1m_features(ml1m_night):
    """The features of the ML-1M night, the run's one ML-1M build: ``(warehouse, date, config, manifest)``."""
    from vasp_jobs.build_matrices import BuildConfig
    from vasp_model.data import layout, storage

    warehouse, date = str(ml1m_night["warehouse"]), ml1m_night["date"]
    manifest = storage.read_json(f"{layout.features_dir(warehouse, date)}/{storage.MANIFEST}")
    return warehouse, date, BuildConfig(**manifest["params"]), manifest


def pytest_configure(config):
    # py4j logs "Closing down clientserver connection" from __del__ at interpreter exit, after
    # pytest closed its streams, which prints a logging traceback below the test summary.
    logging.getLogger("py4j").setLevel(logging.WARNING)
