"""A real, auth-enabled ``mlflow server`` that a fault test can kill, freeze and restart on the same port
(``infra/localstack.py``: the local stack's own server), and a few authenticated REST reads of it."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PASSWORD = "vasp-fault-test-Pw-4e1c9"  # the admin's: must not appear in anything a command prints or writes
ROOT = Path(__file__).resolve().parents[2]


def _localstack():
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from infra_helpers import load_infra

    return load_infra("localstack.py")


class Server:
    """One auth-enabled ``mlflow server`` (SQLite store, proxied artifacts) that a test can kill,
    freeze and restart on the same port."""

    def __init__(self, state: Path):
        self.ls = _localstack()
        self.state = state
        self.backend = f"sqlite:///{state}/mlflow.db"
        self.port: int | None = None
        self.info = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.info = self.ls.start_mlflow(self.state, self.backend, port=self.port, admin_password=PASSWORD)
        self.port = self.info.port

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash: nothing shuts down cleanly)."""
        os.killpg(self.info.pid, signal.SIGKILL)
        self.ls.wait_until(lambda: not self.ls.pid_alive(self.info.pid), 30, "mlflow server to die")
        self.ls.stop_mlflow(self.info)  # forgets the PID file and state

    def freeze(self) -> None:
        os.killpg(self.info.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.info.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.info is not None and self.ls.pid_alive(self.info.pid):
            self.thaw()
            self.ls.stop_mlflow(self.info)

    def get(self, path: str, auth: str | None = f"admin:{PASSWORD}") -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def versions(self, date: str) -> list[dict]:
        query = urllib.parse.quote(f"name='vasp' and tags.date='{date}'")
        status, body = self.get(f"/api/2.0/mlflow/model-versions/search?filter={query}")
        return body.get("model_versions", []) if status == 200 else []

    def aliases(self) -> dict[str, str]:
        status, body = self.get("/api/2.0/mlflow/registered-models/get?name=vasp")
        if status != 200:
            return {}
        return {a["alias"]: a["version"] for a in body["registered_model"].get("aliases", [])}

    def runs(self, status: str) -> list[dict]:
        _, experiments = self.get("/api/2.0/mlflow/experiments/search?max_results=100")
        ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
        if not ids:
            return []
        body = json.dumps({"experiment_ids": ids, "filter": f"attributes.status = '{status}'"}).encode()
        request = urllib.request.Request(self.url + "/api/2.0/mlflow/runs/search", data=body, method="POST")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode())
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}").get("runs", [])
