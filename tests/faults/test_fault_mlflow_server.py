"""The MLflow tracking server down, hung or refusing us around ``vasp train``, ``vasp promote`` and ``vasp score``.

A real ``mlflow server`` behind MLflow's basic-auth app (``infra/localstack.py``: the local stack's
own), killed with SIGKILL, frozen with SIGSTOP (a server that accepts connections but never answers)
and restarted on the same port and store, by PID. Asserted each time: exit code 1 with one line naming
the server and the step, no model version left for a failed attempt, nothing published for the date,
aliases untouched; after the restart a rerun succeeds. The commands run as a user runs them (a fresh
``vasp`` process, credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), with
MLflow's retry settings shortened (``MLFLOW_HTTP_REQUEST_*``) so that giving up takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv
from mlflow_service import PASSWORD, Server

from vasp_model.data import layout, storage

pytestmark = pytest.mark.service

DATE = "2026-02-03"
FAST_GIVE_UP = {  # MLflow's own retry settings, shortened: the pipeline's defaults take about a minute
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory) -> str:
    """Features for DATE from 300 users of four taste groups (the real build job)."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(300):
        group = u % 4
        for i in rng.choice(np.arange(group * 12, group * 12 + 12), 8, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    built, _ = built_features(spark, tmp_path_factory, events_csv(users, items), DATE, heldout_users=30, ab_copies=2)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)
    return wh


class Outputs:
    """Every stdout/stderr of the commands a test ran (checked for the password at the end)."""

    def __init__(self):
        self.texts: list[str] = []


@pytest.fixture(scope="module")
def outputs():
    return Outputs()


def _vasp(server: Server, outputs: Outputs, home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("VASP_", "MLFLOW_"))}
    environment.update(
        VASP_HOME=str(home),
        VASP_TRACKING_URI=server.url,
        MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=PASSWORD,
        TF_CPP_MIN_LOG_LEVEL="2",
        **FAST_GIVE_UP,
    )
    environment.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vasp_model.cli", *argv],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.argv = argv  # type: ignore[attr-defined]
    return proc


def _finish(proc, outputs: Outputs, timeout: float = 900) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    outputs.texts += [out, err]
    return subprocess.CompletedProcess(proc.argv, proc.returncode, out, err)


def _train_argv(warehouse: str, home: Path, epochs: int = 2) -> list[str]:
    return ["train", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--epochs", str(epochs),
            "--hidden", "12", "--quiet", "--checkpoint-dir", str(home / f"ckpt-{epochs}")]  # fmt: skip


def _one_clear_line(result: subprocess.CompletedProcess, server: Server, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith("vasp ")]
    assert len(errors) == 1, lines
    line = errors[0]
    assert server.url in line and "MLflow tracking server" in line, line
    for word in words:
        assert word in line, line
    return line


def _nothing_published(warehouse: str) -> bool:
    return not storage.exists(layout.models_dir(warehouse, DATE))


def test_train_with_the_server_down_fails_fast_then_a_rerun_succeeds(server, warehouse, outputs, tmp_path):
    home = tmp_path / "run"
    server.kill()
    try:
        result = _finish(_vasp(server, outputs, home, *_train_argv(warehouse, home)), outputs)
        _one_clear_line(result, server, "is not reachable", f"starting the training of {DATE}")
        assert not (home / "checkpoints").exists() and not (home / f"ckpt-{2}").exists(), "it trained anyway"
        assert _nothing_published(warehouse)
    finally:
        server.start()
    assert server.versions(DATE) == []


def test_score_with_the_server_down_fails_fast_before_spark_starts(server, warehouse, outputs, tmp_path):
    server.kill()
    try:
        result = _finish(
            _vasp(server, outputs, tmp_path / "run", "score", "--warehouse", warehouse, "--date", DATE), outputs
        )
        _one_clear_line(result, server, "is not reachable", f"scoring {DATE}")
        assert "Spark" not in result.stderr and "py4j" not in result.stderr, result.stderr[-2000:]
        assert not storage.exists(layout.recommendations_dir(warehouse, DATE))
    finally:
        server.start()


def test_server_killed_during_train_leaves_no_version_and_nothing_published(server, warehouse, outputs, tmp_path):
    """SIGKILL once the training's MLflow run is open (the trainer frozen meanwhile, so the moment is
    exact): the run cannot be logged, no version is registered, models/dt=D is not published, staging
    is cleaned; after a restart the same command registers one complete version and publishes."""
    home = tmp_path / "run"
    proc = _vasp(server, outputs, home, *_train_argv(warehouse, home, epochs=20))
    try:
        deadline = time.monotonic() + 600
        while not server.runs("RUNNING"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the training's MLflow run never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGSTOP)
        server.kill()
        proc.send_signal(signal.SIGCONT)
        result = _finish(proc, outputs)
    finally:
        if proc.poll() is None:
            proc.kill()
    _one_clear_line(result, server, "did not answer while", DATE, "MLFLOW_HTTP_REQUEST_")
    assert _nothing_published(warehouse)
    models_root = Path(layout.dataset_dir(warehouse, "models", DATE)).parent
    leftovers = [p for p in models_root.rglob("*") if p.is_file()] if models_root.exists() else []
    assert leftovers == [], f"staging not cleaned: {leftovers[:5]}"

    server.start()
    assert server.versions(DATE) == [], "a version of the failed attempt was left in the registry"
    result = _finish(_vasp(server, outputs, home, *_train_argv(warehouse, home)), outputs)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    (version,) = server.versions(DATE)
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert version["run_id"] == run_id and tags["date"] == DATE and "test.vasp.ndcg_at_100" in tags
    assert {r["info"]["run_id"] for r in server.runs("FINISHED")} >= {run_id}
    assert storage.is_published(layout.models_dir(warehouse, DATE))


def test_promote_with_the_server_down_or_hung_then_a_rerun_promotes(server, warehouse, outputs, tmp_path):
    home = tmp_path / "run"
    promote = ["promote", "--date", DATE, "--warehouse", warehouse, "--margin", "-1"]
    assert server.versions(DATE), "needs the version the training test registered"
    before = server.aliases()

    server.kill()
    try:
        result = _finish(_vasp(server, outputs, home, *promote), outputs)
        _one_clear_line(result, server, "is not reachable", f"promoting {DATE}")
    finally:
        server.start()
    assert server.aliases() == before

    server.freeze()  # accepts connections, never answers: a hung server
    try:
        result = _finish(_vasp(server, outputs, home, *promote), outputs)
    finally:
        server.thaw()
    _one_clear_line(result, server, "timed out", f"promoting {DATE}")
    assert server.aliases() == before

    result = _finish(_vasp(server, outputs, home, *promote), outputs)
    assert result.returncode == 0, result.stderr[-3000:]
    decision = json.loads(result.stdout.strip().splitlines()[-1])
    assert decision["action"] == "promoted", decision
    assert server.aliases()["champion"] == decision["candidate_version"]


def test_unauthenticated_or_wrong_credentials_are_refused(server, warehouse, outputs, tmp_path):
    assert server.get("/api/2.0/mlflow/experiments/search?max_results=1", auth=None)[0] == 401
    assert server.get("/api/2.0/mlflow/experiments/search?max_results=1", auth="admin:not-it")[0] == 401
    assert server.get("/api/2.0/mlflow/experiments/search?max_results=1")[0] == 200
    home = tmp_path / "run"
    promote = ["promote", "--date", DATE, "--warehouse", warehouse]
    for env in ({"MLFLOW_TRACKING_PASSWORD": "not-the-password"}, {"MLFLOW_TRACKING_USERNAME": ""}):
        result = _finish(_vasp(server, outputs, home, *promote, **env), outputs)
        _one_clear_line(result, server, "refused", "HTTP 401", "MLFLOW_TRACKING_USERNAME")


def test_the_password_appears_in_no_output(server, warehouse, outputs, tmp_path):
    """Everything the commands above printed, and every file they wrote to the warehouse."""
    assert len(outputs.texts) >= 10
    for text in outputs.texts:
        assert PASSWORD not in text
    for path in Path(warehouse).rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
