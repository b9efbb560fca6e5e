"""Talking to a tracking server that is not there: MLflow's own retry settings, one clear line naming the
server and the step, credentials from an Airflow connection, URIs shown without their passwords.

"Not there" is a real closed port on 127.0.0.1 (connection refused by the kernel); the server-side
faults (killed, hung, 401) are in tests/faults/test_fault_mlflow_server.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from vasp_model.mlops import server


@pytest.fixture
def closed_url() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def no_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def test_redacted_drops_user_and_password():
    assert server.redacted("https://bob:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert server.redacted("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert server.redacted("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_pipeline_retry_defaults_yield_to_the_environment(monkeypatch):
    for name in server.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    server.configure_http_client()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == server.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 5 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 2


def test_reachability_check_names_the_server_and_the_step(closed_url, no_retries):
    with pytest.raises(server.TrackingServerError) as info:
        server.check_reachable(closed_url, "starting the training of 2026-01-02", attempts=2)
    message = str(info.value)
    assert "\n" not in message
    assert closed_url in message and "is not reachable (Connection refused)" in message
    assert "starting the training of 2026-01-02" in message
    server.check_reachable("sqlite:////nonexistent/mlflow.db", "anything")  # a local store: nothing to reach


def test_a_refused_connection_inside_a_step_becomes_one_line(closed_url, no_retries):
    import mlflow

    client = mlflow.MlflowClient(closed_url, registry_uri=closed_url)
    with pytest.raises(server.TrackingServerError) as info:
        with server.tracking_step(closed_url, "reading the registry") as step:
            step.doing = "moving the champion alias of 2026-01-02"
            client.get_registered_model("vasp")
    message = str(info.value)
    assert "\n" not in message and closed_url in message
    assert "did not answer while moving the champion alias of 2026-01-02" in message
    assert "0 retries, backoff factor 0, 3 s timeout" in message
    with pytest.raises(ValueError, match="not the server's"):  # other errors are left alone
        with server.tracking_step(closed_url, "x"):
            raise ValueError("not the server's")


def test_promote_with_no_server_exits_1_with_one_line(closed_url, no_retries, tmp_path, capsys):
    from vasp_model import cli

    argv = ["promote", "--date", "2026-01-02", "--warehouse", str(tmp_path), "--tracking-uri", closed_url]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vasp promote: error: MLflow tracking server " + closed_url), err


def test_credentials_come_from_an_airflow_connection_and_are_masked(tmp_path):
    """In a fresh process (Airflow configured before its import): the connection's login/password become
    MLflow's client credentials, and Airflow's secrets masker redacts the password from log records."""
    password = "conn-Pw-with/odd chars"
    code = (
        "import logging, os\n"
        "from vasp_model.pipeline.tasks import sign_in_to_mlflow\n"
        "sign_in_to_mlflow()\n"
        "print(os.environ['MLFLOW_TRACKING_USERNAME'], os.environ['MLFLOW_TRACKING_PASSWORD'] == PW)\n"
        "from airflow.sdk._shared.secrets_masker import redact\n"
        "print(redact('token ' + PW))\n"
    ).replace("PW", repr(password))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING", "VASP_"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        VASP_MLFLOW_CONN_ID="mlflow_registry",
        AIRFLOW_CONN_MLFLOW_REGISTRY=json.dumps({"conn_type": "http", "login": "trainer", "password": password}),
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "trainer True", lines
    assert password not in lines[1] and "***" in lines[1], lines
