"""The pipeline against real servers: one night of the DAG under the real Airflow scheduler (LocalExecutor,
not `dag.test`) with its metadata on PostgreSQL (Debian's package), tracking on `mlflow server` over HTTP,
itself on that PostgreSQL. One test checks the run, the other what the MLflow server stored.

PostgreSQL is a throwaway cluster started on 127.0.0.1 (free port) by the fixture and stopped by PID.
Without PostgreSQL these tests skip locally and FAIL under CI=true (CI installs it with
infra/ci/install-system-deps.sh).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from infra_helpers import ROOT, load_infra, read_parquet_files, require, run_or_fail, subprocess_env

pytestmark = [pytest.mark.service, pytest.mark.slow]

localstack = load_infra("localstack.py")
DATE = "2024-01-01"
RUN_ID = "vasp_test_postgres"
TIMEOUT = 900
_run = functools.partial(run_or_fail, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    require(localstack.pg_bin() is not None, "PostgreSQL binaries not found (infra/ci/install-system-deps.sh)")
    return tmp_path_factory.mktemp("pgstack")


@pytest.fixture(scope="module")
def postgres(work):
    pg = localstack.start_postgres(work / "state")
    try:
        yield pg
    finally:
        localstack.stop_postgres(pg)
        assert not localstack.pid_alive(pg.pid), f"PostgreSQL (pid {pg.pid}) still running"
        assert not Path(pg.data_dir).exists()


@pytest.fixture(scope="module")
def mlflow_server(work, postgres):
    server = localstack.start_mlflow(work / "state", postgres.uri("mlflow"))
    try:
        yield server
    finally:
        localstack.stop_mlflow(server)
        assert not localstack.pid_alive(server.pid), f"mlflow server (pid {server.pid}) still running"


def _sql(pg, database: str, query: str):
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.role, dbname=database) as conn:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()


# ----------------------------------------------------------------------------------- Airflow


def _airflow_env(work: Path, pg, mlflow_url: str, api_port: int) -> dict[str, str]:
    home = work / "airflow"
    return subprocess_env(
        work / "run-airflow",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="2",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        # only the run this test triggers: no scheduled run of the latest interval beside it
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=pg.uri("airflow"),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET="vasp-test-only-secret",
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(localstack.free_port()),
        # the pipeline's own configuration (vasp_model.pipeline.plan.NightlyConfig, TrackingConfig)
        VASP_WAREHOUSE=str(work / "warehouse-airflow"),
        VASP_TRACKING_URI=mlflow_url,
        VASP_SPARK_MODE="local",
        VASP_SPARK_MASTER="local[2]",
        VASP_SPARK_SHUFFLE_PARTITIONS="4",
        VASP_RETRIES="0",
        VASP_SENSOR_MODE="poke",
        VASP_INPUT_POKE_S="5",
        # The gate's quality rule is tested elsewhere; a margin of -1 makes this first candidate the champion
        # so that the registry path (register, alias, load by alias) runs end to end on the server.
        VASP_GATE_MARGIN="-1",
        VASP_SYNTHETIC_USERS="600",
        VASP_SYNTHETIC_ITEMS="200",
    )


def _start(name: str, argv: list[str], env: dict, logs: Path) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in the teardown
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_file = out  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process (its session: a LocalExecutor worker may ignore SIGTERM), then SIGKILL by PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the session this test started
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    proc.log_file.close()  # type: ignore[attr-defined]


def _dag_run_state(pg, run_id: str) -> str | None:
    rows = _sql(pg, "airflow", f"SELECT state FROM dag_run WHERE dag_id = 'vasp_nightly' AND run_id = '{run_id}'")
    return rows[0][0] if rows else None


def _task_states(pg, run_id: str) -> dict[str, str]:
    rows = _sql(
        pg, "airflow", f"SELECT task_id, state FROM task_instance WHERE dag_id = 'vasp_nightly' AND run_id = '{run_id}'"
    )
    return {task: str(state) for task, state in rows}


@pytest.fixture(scope="module")
def night(work, postgres, mlflow_server) -> dict:
    """One triggered run of the DAG under the real scheduler (api-server, scheduler, dag-processor; LocalExecutor),
    metadata on PostgreSQL, tracking on the MLflow server; every Airflow process is stopped before it returns."""
    api_port = localstack.free_port()
    env = _airflow_env(work, postgres, mlflow_server.url, api_port)
    logs = work / "airflow-logs"
    _run(["airflow", "db", "migrate"], env, "airflow db migrate")
    _run(["airflow", "pools", "set", "gpu", "1", "training GPU slots"], env, "airflow pools set")
    _run(["airflow", "dags", "reserialize"], env, "airflow dags reserialize")
    procs = []
    try:
        procs.append(_start("api-server", ["airflow", "api-server", "--port", str(api_port)], env, logs))
        procs.append(_start("scheduler", ["airflow", "scheduler", "--skip-serve-logs"], env, logs))
        procs.append(_start("dag-processor", ["airflow", "dag-processor"], env, logs))
        localstack.wait_until(
            lambda: localstack.http_ok(f"http://127.0.0.1:{api_port}/api/v2/version"), 180, "airflow api-server",
            procs[0].pid, logs / "api-server.log",
        )  # fmt: skip
        conf = {"preset": "tiny", "top_n": 10}
        _run(
            ["airflow", "dags", "trigger", "vasp_nightly", "--run-id", RUN_ID, "--logical-date",
             f"{DATE}T00:00:00+00:00", "--conf", json.dumps(conf)],
            env, "airflow dags trigger",
        )  # fmt: skip
        deadline = time.monotonic() + 20 * 60
        state = None
        while time.monotonic() < deadline:
            state = _dag_run_state(postgres, RUN_ID)
            if state in ("success", "failed"):
                break
            for proc in procs:
                assert proc.poll() is None, f"{proc.args[1]} exited early (rc {proc.returncode}); see {logs}"
            time.sleep(5)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    return {
        "state": state,
        "tasks": _task_states(postgres, RUN_ID),
        "runs": _sql(postgres, "airflow", "SELECT run_id FROM dag_run"),
        "procs": procs,
        "logs": logs,
        "warehouse": work / "warehouse-airflow",
        "home": work / "run-airflow",
    }


def test_nightly_run_under_real_scheduler_on_postgres(night, work):
    state, tasks = night["state"], night["tasks"]
    assert state == "success", (
        f"dag run state {state}; tasks {tasks}; logs under {night['logs']} and {work / 'airflow'}"
    )
    assert tasks.pop("tune_model", None) == "skipped", tasks  # tuning is off by default
    assert all(s == "success" for s in tasks.values()), tasks
    assert len(tasks) >= 8
    assert night["runs"] == [(RUN_ID,)], "a run beside the triggered one"
    for proc in night["procs"]:
        assert proc.poll() is not None, f"{proc.args} still running"
    recs = night["warehouse"] / "recommendations" / f"dt={DATE}"
    assert (recs / "_SUCCESS").exists()


def test_pipeline_tracks_on_mlflow_server_on_postgres(night, postgres, mlflow_server):
    """train -> promote -> score of that night, all tracking over HTTP: what the server stored, seen from a
    client and on its side."""
    assert night["state"] == "success", night["tasks"]
    uri = mlflow_server.url
    from mlflow import MlflowClient

    from vasp_model.mlops import tracking

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("vasp", "champion")
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert any(key.startswith("test") or "ndcg" in key for key in run.data.metrics)
    assert champion.source and champion.run_id
    with tracking.mlflow_uri(uri):  # put back after: a later test's subprocess must not inherit this server
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts, "no artifacts logged through the server"
    # ... and on its side: rows in PostgreSQL, artifact files under the server's artifact root
    assert _sql(postgres, "mlflow", "SELECT count(*) FROM runs")[0][0] >= 1
    assert _sql(postgres, "mlflow", "SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'")[0][0] == 1
    artifact_root = Path(mlflow_server.artifacts_destination.removeprefix("file://"))
    assert any(p.is_file() for p in artifact_root.rglob("*")), f"nothing under {artifact_root}"
    assert not (night["home"] / "mlflow.db").exists(), "the pipeline fell back to the local SQLite store"

    # the gate (margin -1) promoted the night's model, and it scored every user
    import pandas as pd

    warehouse = night["warehouse"]
    record = json.loads((warehouse / "runs" / f"dt={DATE}" / "run.json").read_text())
    assert record["promotion"]["action"] == "promoted", record["promotion"]
    recs = read_parquet_files(warehouse / "recommendations" / f"dt={DATE}")
    users = pd.read_parquet(warehouse / "features" / f"dt={DATE}" / "users")
    assert recs["user_id"].nunique() == len(users)
    assert set(recs["model_version"]) == {str(champion.version)}
