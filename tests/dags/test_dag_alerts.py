"""Alerting through the real DAG: a night whose input never arrives fails at the sensor, and the
on-call gets one alert naming the task and why, by mail (a real SMTP server on 127.0.0.1) and webhook.
The wiring of every callback and of the deadline alert is checked on the parsed DAG."""

from __future__ import annotations

import pytest
from alert_servers import smtp_server, webhook_server  # noqa: F401 (fixtures)

from vasp_model.data import layout
from vasp_model.pipeline import alerts
from vasp_model.pipeline.callbacks import NightlyAlert, failing_task_alerted

D_MISSING = "2026-04-02"
DAGS = "dags"


def _parse(monkeypatch, **env: str):
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.conftest import DAGS as dag_folder

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(dag_folder))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["vasp_nightly"]


def _events(callbacks) -> list[str]:
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return [c.event for c in callbacks if isinstance(c, NightlyAlert)]


def test_every_task_and_the_run_alert_on_failure(monkeypatch):
    dag = _parse(monkeypatch)
    for task in dag.tasks:
        expected = ["output_check_failed"] if task.task_id == "validate_recommendations" else ["task_failed"]
        assert _events(task.on_failure_callback) == expected, task.task_id
    assert _events(dag.on_failure_callback) == ["run_failed"]
    assert not dag.deadline  # no VASP_ALERT_DEADLINE: no deadline alert


def test_the_run_alerts_only_when_the_failing_task_did_not(monkeypatch):
    dag = _parse(monkeypatch)

    class FailedTask:  # what a run callback's context carries as ``ti``
        def __init__(self, task):
            self.task, self.task_id = task, task.task_id

    sensor = FailedTask(dag.get_task("wait_for_input"))
    assert failing_task_alerted({"reason": "task_failure", "ti": sensor})
    assert not failing_task_alerted({"reason": "all_tasks_deadlocked", "ti": sensor})
    assert not failing_task_alerted({"reason": "task_failure"})  # no task known: the run alerts

    class SerializedTask:  # a serialized task keeps only whether it has failure callbacks
        task_id, on_failure_callback = "train_model", None

        def __init__(self, has_callbacks):
            self.has_on_failure_callback = has_callbacks

    assert failing_task_alerted({"reason": "task_failure", "ti": FailedTask(SerializedTask(True))})
    assert not failing_task_alerted({"reason": "task_failure", "ti": FailedTask(SerializedTask(False))})


def test_the_deadline_alert_comes_from_the_env(monkeypatch):
    from airflow.sdk import AsyncCallback, DeadlineReference

    dag = _parse(monkeypatch, VASP_ALERT_DEADLINE="6h")
    [deadline] = dag.deadline
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval.total_seconds() == 6 * 3600
    assert isinstance(deadline.callback, AsyncCallback)
    assert deadline.callback.path == "vasp_model.pipeline.alerts.on_deadline_missed"
    assert deadline.callback.kwargs == {"deadline": "6h"}


@pytest.mark.service
def test_a_failed_night_mails_once_naming_the_task_and_why(smtp_server, webhook_server, tmp_path):  # noqa: F811
    from night_process import run_night_in_own_process

    host, port, mailbox = smtp_server
    url, received = webhook_server
    missing = tmp_path / "no-such-input" / "events.csv"
    env = {
        "VASP_HOME": str(tmp_path / "run"),
        "VASP_WAREHOUSE": str(tmp_path / "warehouse"),
        "VASP_TRACKING_URI": f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}",
        "VASP_RETRIES": "0",
        "VASP_INPUT_TIMEOUT_S": "1",
        "VASP_INPUT_POKE_S": "1",
        "VASP_SENSOR_MODE": "poke",
        "VASP_ALERT_EMAIL": "oncall@example.org",
        "VASP_ALERT_SMTP": f"{host}:{port}",
        "VASP_ALERT_WEBHOOK": f"{url}/hooks/night",
        "VASP_ALERT_DEADLINE": "2h",
    }
    result = run_night_in_own_process(D_MISSING, {"input": str(missing)}, env)

    assert result["state"] == "failed"
    assert result["tasks"]["wait_for_input"]["state"] == "failed"
    record = alerts.run_record(str(tmp_path / "warehouse"), D_MISSING)
    assert record == f"{layout.dataset_dir(str(tmp_path / 'warehouse'), 'runs', D_MISSING)}/run.json"
    [mail] = mailbox.messages  # the task's alert; the run's callback sees it went out and stays quiet
    assert mail["subject"] == f"[vasp_nightly] {D_MISSING}: task wait_for_input failed"
    assert mail["to"] == ["oncall@example.org"]
    assert "AirflowSensorTimeout" in mail["body"] and record in mail["body"]
    [post] = received
    assert post["path"] == "/hooks/night" and post["json"]["subject"] == mail["subject"]
    assert post["json"]["details"]["task_id"] == "wait_for_input" and post["json"]["event"] == "task_failed"
