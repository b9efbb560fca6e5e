"""The deadline alert under a real ``airflow scheduler`` and ``airflow triggerer``: a run of the nightly
DAG that is still not finished a few seconds after it was queued mails that it is late, naming the run,
its state and where its record will be. The DAG stays paused, so the triggered run stays queued."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alert_servers import smtp_server  # noqa: F401 (fixture)

from tests.dags.conftest import DAGS

DATE = "2026-03-01"
RUN_ID = "manual__late-night-test"

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _airflow_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VASP_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        **extra,
    )
    return env


def test_a_run_past_its_deadline_mails_that_it_is_late(smtp_server, tmp_path):  # noqa: F811
    host, port, mailbox = smtp_server
    warehouse = tmp_path / "warehouse"
    env = _airflow_env(
        tmp_path / "airflow",
        VASP_HOME=str(tmp_path / "run"),
        VASP_WAREHOUSE=str(warehouse),
        VASP_ALERT_EMAIL="oncall@example.org",
        VASP_ALERT_SMTP=f"{host}:{port}",
        VASP_ALERT_DEADLINE="3s",
    )
    airflow = str(Path(sys.executable).with_name("airflow"))

    def run(*args: str) -> None:
        subprocess.run([airflow, *args], env=env, check=True, capture_output=True, timeout=300)

    (tmp_path / "airflow").mkdir()
    run("db", "migrate")
    run("dags", "reserialize")
    services = []
    try:
        for service in ("scheduler", "triggerer"):
            log = open(tmp_path / f"{service}.log", "wb")  # noqa: SIM115 (closed with the process)
            services.append((subprocess.Popen([airflow, service], env=env, stdout=log, stderr=log), log))
        run("dags", "trigger", "vasp_nightly", "--run-id", RUN_ID, "--conf", f'{{"date": "{DATE}"}}')
        deadline = time.monotonic() + 180
        while not mailbox.messages and time.monotonic() < deadline:
            assert all(p.poll() is None for p, _ in services), "a service exited: see its log under tmp_path"
            time.sleep(1)
    finally:
        for process, log in services:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()

    triggerer_log = (tmp_path / "triggerer.log").read_text(errors="replace")
    assert mailbox.messages, f"no late-run mail; the triggerer said:\n{triggerer_log[-3000:]}"
    [mail] = mailbox.messages
    assert mail["subject"].startswith(f"[vasp_nightly] {DATE}: run not finished by its deadline ")
    assert mail["to"] == ["oncall@example.org"]
    assert f"the run {RUN_ID} (state queued)" in mail["body"]
    assert "had not finished 3s later" in mail["body"]
    assert f"{warehouse}/runs/dt={DATE}/run.json" in mail["body"]
