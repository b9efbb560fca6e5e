"""A whole night against a tracking server behind MLflow's basic-auth app, signed in through an Airflow
connection, and the password in none of what the night prints or writes.

``vasp run`` (the DAG through ``dag.test``: build, train, promote, score, publish) with
``VASP_TRACKING_URI`` at a real ``mlflow server --app-name basic-auth`` and the credentials only in the
Airflow connection ``mlflow`` (``AIRFLOW_CONN_MLFLOW``), not in ``MLFLOW_TRACKING_*``. Afterwards every
file under the run directory (Airflow's task logs included) and the warehouse (run.json, manifests),
and the command's stdout/stderr (where ``dag.test`` logs the tasks), are searched for the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_service import PASSWORD

pytestmark = [pytest.mark.service, pytest.mark.slow]

DATE = "2026-03-04"


def test_a_night_signs_in_through_an_airflow_connection_and_never_shows_the_password(server, tmp_path):
    home, warehouse = tmp_path / "run", tmp_path / "warehouse"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VASP_", "MLFLOW_", "AIRFLOW"))}
    env.update(
        VASP_HOME=str(home),
        VASP_WAREHOUSE=str(warehouse),
        VASP_TRACKING_URI=server.url,
        VASP_GATE_MARGIN="-1",  # promote the night's model, so that score loads it through the server
        VASP_SYNTHETIC_USERS="400",
        VASP_SYNTHETIC_ITEMS="150",
        VASP_SPARK_MASTER="local[2]",
        VASP_SPARK_SHUFFLE_PARTITIONS="4",
        AIRFLOW_CONN_MLFLOW=json.dumps({"conn_type": "http", "login": "admin", "password": PASSWORD}),
        SPARK_LOCAL_IP="127.0.0.1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    vasp = [sys.executable, "-m", "vasp_model.cli"]
    result = subprocess.run(
        [*vasp, "run", "--date", DATE, "--preset", "tiny", "--top-n", "10"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # `vasp run` parses ./dags
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    record = json.loads((warehouse / "runs" / f"dt={DATE}" / "run.json").read_text())
    assert record["tracking_uri"] == server.url
    assert record["promotion"]["action"] == "promoted", record["promotion"]
    (version,) = server.versions(DATE)
    assert server.aliases()["champion"] == version["version"]

    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    searched = 0
    for root in (home, warehouse):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                searched += 1
                assert PASSWORD.encode() not in path.read_bytes(), path
    assert searched > 20, searched  # dag.test logs the tasks to the command's own output, searched above
