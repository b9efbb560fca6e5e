"""Fixtures shared by the fault tests."""

from __future__ import annotations

import pytest
from mlflow_service import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` behind MLflow's basic-auth app, one per test module, stopped by its PID."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (the dev extra installs it)")
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert not server.ls.pid_alive(server.info.pid)
