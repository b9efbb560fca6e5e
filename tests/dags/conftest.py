"""Airflow test fixtures: a private AIRFLOW_HOME (set before airflow is imported) and one DagBag.

Airflow reads its configuration when it is first imported, so the environment is set at
conftest import time, before any test module imports airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

_HOME = tempfile.mkdtemp(prefix="vasp-airflow-test-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"


@pytest.fixture(scope="session")
def dagbag():
    """The DAG folder parsed once, as the dag-processor would."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def nightly_dag(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag.dags["vasp_nightly"]
