"""Shared fixtures. The SparkSession is session-scoped and lazy: only tests that ask for
``spark`` start it (one JVM for the whole run); everything else never touches Spark."""

from __future__ import annotations

import logging
import os
import sys

import pytest


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


def pytest_configure(config):
    # py4j logs "Closing down clientserver connection" from __del__ at interpreter exit, after
    # pytest closed its streams, which prints a logging traceback below the test summary.
    logging.getLogger("py4j").setLevel(logging.WARNING)
