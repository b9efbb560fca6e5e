"""Airflow's API server is not open without a login in the documented stack.

The auth settings are read from the documented deployments (``infra/compose/docker-compose.yml``,
``infra/k8s/airflow-values.yaml``), which must agree; a real ``airflow api-server`` on 127.0.0.1 runs
with them (SQLite metadata, a passwords file of our own), and an anonymous REST request is refused
while a signed-in one (token from ``POST /auth/token``) is served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "airflow-access-test-Pw-77"


def _compose_auth() -> dict[str, str]:
    """The ``AIRFLOW__CORE__*AUTH_MANAGER*`` settings of the compose stack's Airflow containers
    (``${VAR:-default}`` resolved to its default)."""
    compose = yaml.safe_load((ROOT / "infra/compose/docker-compose.yml").read_text())
    env = compose["x-airflow-common"]["environment"]
    settings = {k: str(v) for k, v in env.items() if k.startswith("AIRFLOW__CORE__") and "AUTH_MANAGER" in k}
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in settings.items()}


def _helm_auth() -> dict[str, str]:
    values = yaml.safe_load((ROOT / "infra/k8s/airflow-values.yaml").read_text())
    core = values["config"]["core"]
    return {f"AIRFLOW__CORE__{k.upper()}": str(v) for k, v in core.items() if "auth_manager" in k}


def test_documented_stacks_require_a_login():
    for settings in (_compose_auth(), _helm_auth()):
        assert settings["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager"), settings
        assert settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"].lower() == "false", settings
        assert settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin", settings
        assert settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], settings
    assert _compose_auth() == _helm_auth()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}  # not listening yet


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """``airflow api-server`` with the compose stack's auth settings; yields (base URL, seconds to healthy)."""
    home = tmp_path_factory.mktemp("airflow-access")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(_compose_auth())
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API_AUTH__JWT_SECRET="access-test-only-secret",
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = open(home / "api-server.log", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen(
        [airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while _request(f"{url}/api/v2/monitor/health")[0] != 200:
            assert proc.poll() is None, (home / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "api-server.log").read_text()[-3000:]
            time.sleep(1)
        yield url, time.monotonic() - started
        assert json.loads(passwords.read_text()) == {"admin": PASSWORD}, "the passwords file was rewritten"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_api_server_refuses_anonymous_requests_and_serves_a_login(api_server):
    url, seconds = api_server
    print(f"api-server healthy after {seconds:.0f} s")
    assert _request(f"{url}/api/v2/monitor/health")[0] == 200  # public: load balancers probe it
    for path in ("/api/v2/dags", "/api/v2/connections", "/api/v2/variables", "/api/v2/config"):
        assert _request(url + path)[0] in (401, 403), path
    assert _request(f"{url}/api/v2/dags", token="not-a-token")[0] in (401, 403)

    assert _request(f"{url}/auth/token", {"username": "admin", "password": "wrong"})[0] == 401
    status, body = _request(f"{url}/auth/token", {"username": "admin", "password": PASSWORD})
    assert status == 201 and body["access_token"], (status, body)
    status, dags = _request(f"{url}/api/v2/dags", token=body["access_token"])
    assert status == 200 and "dags" in dags, (status, dags)
