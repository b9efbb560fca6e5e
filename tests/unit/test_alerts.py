"""Alerting: off by default with one line; real mail (aiosmtpd on 127.0.0.1) and a real webhook
(http.server) for each trigger; unreachable targets warn once and never raise; credentials stay
out of the logs. The DAG's wiring is exercised in tests/dags/test_dag_alerts.py."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import pytest
from alert_servers import free_port, smtp_server, webhook_server  # noqa: F401 (fixtures)

from vasp_model.core.settings import ConfigError
from vasp_model.data import layout, storage
from vasp_model.pipeline import alerts

os.environ.setdefault(
    "AIRFLOW_HOME", tempfile.mkdtemp(prefix="vasp-airflow-alerts-")
)  # the SMTP provider imports airflow

DATE = "2026-03-05"
PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def no_alert_env(monkeypatch):
    """Each test starts with alerting unset and the once-per-process "off" line not yet logged."""
    for key in [k for k in os.environ if k.startswith("VASP_ALERT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(alerts, "_announced_off", False)


def _alert(wh: str = "/wh", **kw) -> alerts.Alert:
    fields = {
        "event": "task_failed",
        "summary": "task build_features failed",
        "reason": "ValueError: input has no user_id column",
        "date": DATE,
        "run_record": alerts.run_record(wh, DATE),
        "run_id": "manual__2026-03-05",
    }
    return alerts.Alert(**{**fields, **kw})


def _config(**overrides) -> alerts.AlertConfig:
    return alerts.load_alert_config(overrides)


def _write_record(wh, date: str, action: str, **extra) -> None:
    runs = layout.dataset_dir(str(wh), "runs", date)
    staging = storage.staging_dir(runs)
    storage.write_json(
        f"{staging}/run.json", {"date": date, "promotion": {"action": action, "reason": f"{action} on {date}"}, **extra}
    )
    storage.publish(staging, runs)


# -- without servers -----------------------------------------------------------------------------


def test_alerting_is_off_by_default_with_one_clear_line(caplog):
    config = alerts.load_alert_config()
    assert not config.enabled and config.recipients == [] and config.alert_deadline == ""
    with caplog.at_level(logging.INFO, logger="vasp_model.pipeline.alerts"):
        assert alerts.send(_alert()) == {}
        assert alerts.send(_alert(summary="another")) == {}
    off = [r.getMessage() for r in caplog.records if "alerting is off" in r.getMessage()]
    assert len(off) == 1, off
    assert "VASP_ALERT_EMAIL" in off[0] and "VASP_ALERT_WEBHOOK" in off[0]


def test_settings_come_from_vasp_alert_env(monkeypatch):
    monkeypatch.setenv("VASP_ALERT_EMAIL", "a@example.org, b@example.org")
    monkeypatch.setenv("VASP_ALERT_REJECT_NIGHTS", "2")
    monkeypatch.setenv("VASP_ALERT_DEADLINE", "90m")
    config = alerts.load_alert_config()
    assert config.enabled and config.recipients == ["a@example.org", "b@example.org"]
    assert config.alert_reject_nights == 2 and config.deadline_seconds == 5400
    assert config.alert_champion_max_age_days == 7


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("alert_smtp", "mailhost", "host:port"),
        ("alert_webhook", "ftp://chat.example.org/hook", "http"),
        ("alert_deadline", "soon", "duration"),
        ("alert_reject_nights", 0, "alert_reject_nights"),
    ],
)
def test_bad_settings_name_the_problem(key, value, message):
    with pytest.raises(ConfigError, match=message):
        _config(**{key: value})


def test_a_webhook_url_is_logged_as_its_host_only():
    assert alerts.webhook_host("https://hooks.slack.com/services/T000/B000/XXXXSECRET") == "https://hooks.slack.com/…"


def test_the_alert_names_dag_date_what_and_where():
    alert = _alert()
    assert alert.subject == f"[vasp_nightly] {DATE}: task build_features failed"
    assert "input has no user_id column" in alert.html() and alert.run_record in alert.html()
    assert f"file:///wh/runs/dt={DATE}/run.json" in alert.html()
    payload = json.loads(json.dumps(alert.payload()))
    assert payload["text"].startswith(alert.subject) and payload["date"] == DATE and payload["event"] == "task_failed"


def test_drift_flags_need_a_rule_and_a_message():
    assert alerts.alert_flags(DATE, []) == {}
    with pytest.raises(ValueError, match="'rule' and 'message'"):
        alerts.alert_flags(DATE, [{"rule": "volume_drop"}])


def test_rejection_streak_counts_back_from_the_date(tmp_path):
    wh = tmp_path / "wh"
    for date, action in [
        ("2026-03-01", "promoted"),
        ("2026-03-02", "rejected"),
        ("2026-03-03", "rejected"),
        ("2026-03-04", "backfill"),  # a past date re-run later: it decided nothing, skipped
        ("2026-03-05", "rejected"),
        ("2026-03-06", "promoted"),
    ]:
        _write_record(wh, date, action)
    assert alerts.rejection_streak(str(wh), "2026-03-05") == ["2026-03-05", "2026-03-03", "2026-03-02"]
    assert alerts.check_night({"date": "2026-03-04", "promotion": {"action": "backfill"}}, str(wh)) == []
    assert alerts.rejection_streak(str(wh), "2026-03-06") == []
    assert alerts.rejection_streak(str(wh), "2026-03-01") == []
    assert alerts.rejection_streak(str(tmp_path / "empty"), "2026-03-05") == []


def test_model_age():
    assert alerts.model_age_days("2026-03-10", "2026-03-02") == 8
    assert alerts.model_age_days("2026-03-10", "2026-03-10") == 0


# -- real SMTP server and webhook on 127.0.0.1 -----------------------------------------------------


@pytest.mark.service
def test_mail_and_webhook_carry_the_alert(smtp_server, webhook_server):  # noqa: F811
    host, port, mailbox = smtp_server
    url, received = webhook_server
    config = _config(
        alert_email="oncall@example.org,ml@example.org",
        alert_smtp=f"{host}:{port}",
        alert_webhook=f"{url}/hook/T0/SECRET",
    )

    assert alerts.send(_alert(), config) == {"email": True, "webhook": True}

    [mail] = mailbox.messages
    assert sorted(mail["to"]) == ["ml@example.org", "oncall@example.org"]
    assert mail["subject"] == f"[vasp_nightly] {DATE}: task build_features failed"
    assert "ValueError: input has no user_id column" in mail["body"]
    assert f"/wh/runs/dt={DATE}/run.json" in mail["body"]
    [post] = received
    assert post["path"] == "/hook/T0/SECRET" and post["type"] == "application/json"
    assert post["json"]["subject"] == mail["subject"] and post["json"]["reason"].startswith("ValueError")
    assert post["json"]["run_record"] == f"/wh/runs/dt={DATE}/run.json"


@pytest.mark.service
def test_drift_flags_alert_once_for_all_flags(smtp_server, webhook_server, monkeypatch, tmp_path):  # noqa: F811
    host, port, mailbox = smtp_server
    url, received = webhook_server
    config = _config(alert_email="oncall@example.org", alert_smtp=f"{host}:{port}", alert_webhook=url)
    flags = [
        {"rule": "catalog_shift", "message": "41 new items (8% of the catalog), 12 vanished", "value": 0.08},
        {"rule": "volume_drop", "message": "input rows 61% of the median of the last 7 nights"},
    ]

    monkeypatch.setenv("VASP_WAREHOUSE", str(tmp_path / "wh"))
    sent = alerts.alert_flags(DATE, flags, config)

    assert sent == {"email": True, "webhook": True}
    [mail] = mailbox.messages
    assert mail["subject"] == f"[vasp_nightly] {DATE}: drift flagged: catalog_shift, volume_drop"
    assert "41 new items" in mail["body"] and "61% of the median" in mail["body"]
    assert f"{tmp_path}/wh/runs/dt={DATE}/run.json" in mail["body"]
    assert [f["rule"] for f in received[0]["json"]["details"]["flags"]] == ["catalog_shift", "volume_drop"]
    assert received[0]["json"]["event"] == "drift"


@pytest.mark.service
def test_unreachable_targets_warn_once_each_and_never_raise(webhook_server, caplog):  # noqa: F811
    url, received = webhook_server
    closed = free_port()
    for webhook in (f"http://127.0.0.1:{closed}/hook", f"{url}/broken"):  # refused; a 500 answer
        caplog.clear()
        config = _config(alert_email="oncall@example.org", alert_smtp=f"127.0.0.1:{closed}", alert_webhook=webhook)
        with caplog.at_level(logging.INFO, logger="vasp_model.pipeline.alerts"):
            assert alerts.send(_alert(), config) == {"email": False, "webhook": False}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings
        assert any(f"by email to 1 recipient(s) via SMTP relay 127.0.0.1:{closed}" in w for w in warnings)
        assert any("by webhook to http://127.0.0.1:" in w and "the pipeline goes on" in w for w in warnings)
        assert not any("/hook" in w or "/broken" in w for w in warnings)  # the URL's path is never logged
    assert len(received) == 1  # the /broken endpoint got the POST and answered 500


@pytest.mark.service
def test_mail_through_an_airflow_connection_never_logs_its_credentials(smtp_server, monkeypatch, caplog, capsys):  # noqa: F811
    host, port, mailbox = smtp_server

    def connection(password: str) -> str:
        extra = {"disable_tls": True, "disable_ssl": True, "from_email": "vasp@example.org", "retry_limit": 0}
        return json.dumps(
            {"conn_type": "smtp", "host": host, "port": port, "login": "alerts", "password": password, "extra": extra}
        )

    config = _config(alert_email="oncall@example.org", alert_smtp_conn_id="vasp_mail")
    monkeypatch.setenv("AIRFLOW_CONN_VASP_MAIL", connection(PASSWORD))
    with caplog.at_level(logging.DEBUG):
        assert alerts.send(_alert(), config) == {"email": True}
        monkeypatch.setenv("AIRFLOW_CONN_VASP_MAIL", connection("wrong-" + PASSWORD))
        assert alerts.send(_alert(summary="second"), config) == {"email": False}

    assert set(mailbox.logins) == {"alerts"} and len(mailbox.logins) >= 2  # smtplib tries each mechanism
    [mail] = mailbox.messages
    assert mail["from"] == "vasp@example.org"
    failure = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("vasp")]
    assert len(failure) == 1 and "Airflow connection 'vasp_mail'" in failure[0] and "Authentication" in failure[0]
    out = capsys.readouterr()
    assert PASSWORD not in caplog.text + out.out + out.err


@pytest.mark.service
def test_the_deadline_callback_mails_that_the_run_is_late(smtp_server, monkeypatch, tmp_path):  # noqa: F811
    """The callback Airflow's deadline alert calls, with the context the scheduler builds for it
    (``Deadline.handle_miss``: the run as the REST API shows it, and the deadline)."""
    import asyncio

    host, port, mailbox = smtp_server
    monkeypatch.setenv("VASP_ALERT_EMAIL", "oncall@example.org")
    monkeypatch.setenv("VASP_ALERT_SMTP", f"{host}:{port}")
    monkeypatch.setenv("VASP_WAREHOUSE", str(tmp_path / "wh"))
    context = {
        "dag_run": {
            "dag_id": "vasp_nightly",
            "dag_run_id": "scheduled__2026-03-05T02:00:00+00:00",  # the REST API's name, as the scheduler sends it
            "logical_date": "2026-03-05T00:00:00Z",
            "run_after": "2026-03-06T02:00:00Z",
            "queued_at": "2026-03-06T02:00:05Z",
            "state": "running",
            "conf": {},
        },
        "deadline": {"id": "0199", "deadline_time": "2026-03-06T08:00:05+00:00"},
    }

    asyncio.run(alerts.on_deadline_missed(context=context, deadline="6h"))

    [mail] = mailbox.messages
    assert mail["subject"] == "[vasp_nightly] 2026-03-05: run not finished by its deadline 2026-03-06T08:00:05+00:00"
    assert "had not finished 6h later" in mail["body"]
    assert "the run scheduled__2026-03-05T02:00:00+00:00 (state running)" in mail["body"]
    assert f"{tmp_path}/wh/runs/dt=2026-03-05/run.json" in mail["body"]


@pytest.mark.service
def test_night_checks_alert_on_a_rejection_streak_and_a_stale_model(smtp_server, tmp_path):  # noqa: F811
    import mlflow

    host, port, mailbox = smtp_server
    wh, tracking = tmp_path / "wh", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking, registry_uri=tracking)
    client.create_registered_model("vasp")
    version = client.create_model_version("vasp", source=str(tmp_path / "model"), tags={"date": "2026-02-20"}).version
    serving = {"kind": "vasp", "registered_model": "vasp", "version": str(version)}
    for date in ("2026-03-03", "2026-03-04", "2026-03-05"):
        _write_record(wh, date, "rejected", serving=serving, tracking_uri=tracking)
    record = storage.read_json(alerts.run_record(str(wh), DATE))
    config = _config(alert_email="oncall@example.org", alert_smtp=f"{host}:{port}")

    raised = alerts.check_night(record, str(wh), config, run_id="scheduled__x")

    assert [a.event for a in raised] == ["gate_rejections", "champion_stale"]
    subjects = sorted(m["subject"] for m in mailbox.messages)
    assert subjects == [
        f"[vasp_nightly] {DATE}: the gate rejected the candidate 3 nights in a row",
        f"[vasp_nightly] {DATE}: the serving model vasp v{version} is 13 days old",
    ]
    body = {m["subject"]: m["body"] for m in mailbox.messages}[subjects[0]]
    assert "2026-03-03, 2026-03-04, 2026-03-05" in body and "rejected on 2026-03-05" in body
    # below both thresholds: nothing
    mailbox.messages.clear()
    lenient = _config(
        alert_email="oncall@example.org",
        alert_smtp=f"{host}:{port}",
        alert_reject_nights=4,
        alert_champion_max_age_days=14,
    )
    assert alerts.check_night(record, str(wh), lenient) == [] and mailbox.messages == []


def test_a_failed_output_check_names_the_task_the_rule_and_the_night(monkeypatch, tmp_path):
    """The context Airflow gives a task's ``on_failure_callback`` (the parts the alert reads)."""
    import datetime as dt
    from types import SimpleNamespace

    monkeypatch.setenv("VASP_WAREHOUSE", str(tmp_path / "wh"))
    ti = SimpleNamespace(task_id="validate_recommendations", try_number=3, log_url="http://airflow/log?try=3")
    dag_run = SimpleNamespace(
        dag_id="vasp_nightly", run_id="scheduled__x", run_after=dt.datetime(2026, 3, 6, 2, tzinfo=dt.UTC)
    )
    context = {
        "ti": ti,
        "dag_run": dag_run,
        "run_id": "scheduled__x",
        "params": {"date": None},
        "logical_date": dt.datetime(2026, 3, 5, tzinfo=dt.UTC),
        "exception": ValueError("published recommendations are invalid: 3 user(s) have no list"),
    }

    alert = alerts.from_task_context("output_check_failed", context)

    assert alert.subject == f"[vasp_nightly] {DATE}: output check failed (validate_recommendations)"
    assert alert.reason == "ValueError: published recommendations are invalid: 3 user(s) have no list"
    assert alert.run_record == f"{tmp_path}/wh/runs/dt={DATE}/run.json" and alert.log_url == ti.log_url
    assert alert.details == {
        "task_id": "validate_recommendations",
        "try_number": 3,
        "run_record": "not written: the night did not publish",
    }
    rerun = alerts.from_task_context("task_failed", {**context, "params": {"date": "2026-02-01"}})
    assert rerun.date == "2026-02-01" and rerun.summary == "task validate_recommendations failed"


@pytest.mark.service
def test_the_webhook_notifier_works_as_any_tasks_callback(webhook_server):  # noqa: F811
    """Standalone, as Airflow calls a notifier: the payload is templated with the context, then POSTed."""
    from types import SimpleNamespace

    from vasp_model.pipeline.notifiers import WebhookNotifier

    url, received = webhook_server
    notifier = WebhookNotifier(url=f"{url}/chat", payload={"text": "task {{ ti.task_id }} of {{ ds }} failed"})
    notifier({"ti": SimpleNamespace(task_id="score_users"), "ds": DATE})
    assert received == [
        {"path": "/chat", "type": "application/json", "json": {"text": f"task score_users of {DATE} failed"}}
    ]
