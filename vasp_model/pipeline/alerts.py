"""Alerts of the nightly run: what went wrong, said once, by mail and/or a webhook.

What alerts: a failed task, a failed run, a run not finished by its deadline, the gate rejecting
``alert_reject_nights`` nights in a row, a serving model older than ``alert_champion_max_age_days``,
a failed output check, and drift flags of the morning report (:func:`alert_flags`). The DAG wires
the failure callbacks and the deadline (:mod:`vasp_model.pipeline.callbacks`); the publish task
calls :func:`check_night`.

Off by default: with neither ``VASP_ALERT_EMAIL`` nor ``VASP_ALERT_WEBHOOK`` set, one log line says
so and how to turn it on. Delivery goes through Airflow's notifiers (the SMTP provider's
``SmtpNotifier``, and :class:`~vasp_model.pipeline.notifiers.WebhookNotifier`); a target that cannot
be reached logs one warning and never fails the pipeline. Credentials live in the Airflow SMTP
connection and are never logged; a webhook URL is logged as its host only.

Imported when the DAG file is parsed: no airflow, mlflow or pyarrow at module level.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from vasp_model.core import settings
from vasp_model.data import layout

log = logging.getLogger(__name__)

DAG_ID = "vasp_nightly"
HOW_TO_TURN_ON = (
    "set VASP_ALERT_EMAIL (recipients; mail goes through VASP_ALERT_SMTP=host:port or the Airflow SMTP "
    "connection VASP_ALERT_SMTP_CONN_ID) and/or VASP_ALERT_WEBHOOK (a URL that takes a JSON POST)"
)
MAX_REASON = 4000  # characters of a reason kept in an alert
_announced_off = False  # the "alerting is off" line is logged once per process


@dataclasses.dataclass(frozen=True)
class AlertConfig:
    """Where alerts go and what triggers them: defaults, then ``VASP_ALERT_*`` env vars."""

    alert_email: str = ""  # recipients, comma-separated ("" = no mail)
    alert_from: str = ""  # sender ("" = the connection's from_email, else vasp-nightly@localhost)
    alert_smtp: str = ""  # host:port of a plain relay (no TLS, no login); "" = the Airflow connection below
    alert_smtp_conn_id: str = "smtp_default"  # Airflow SMTP connection (host, login/password, TLS)
    alert_webhook: str = ""  # URL that gets each alert as a JSON POST (Slack/Teams-style incoming webhook)
    alert_deadline: str = ""  # a run not finished this long after it was queued alerts (900s, 30m, 6h; "" = none)
    alert_reject_nights: int = 3  # the gate rejecting this many nights in a row alerts
    alert_champion_max_age_days: int = 7  # the serving model trained for a date this many days before D alerts
    alert_timeout_s: int = 10  # per delivery attempt

    def __post_init__(self) -> None:
        if self.alert_smtp:
            _host_port(self.alert_smtp)
        if self.alert_webhook and urlsplit(self.alert_webhook).scheme not in ("http", "https"):
            raise ValueError(
                f"alert_webhook must be an http(s) URL, got one with scheme {urlsplit(self.alert_webhook).scheme!r}"
            )
        if self.alert_deadline:
            settings.parse_duration(self.alert_deadline, "alert_deadline")
        for name in ("alert_reject_nights", "alert_champion_max_age_days", "alert_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def recipients(self) -> list[str]:
        return [r.strip() for r in self.alert_email.split(",") if r.strip()]

    @property
    def enabled(self) -> bool:
        return bool(self.recipients or self.alert_webhook)

    @property
    def deadline_seconds(self) -> float | None:
        return settings.parse_duration(self.alert_deadline) if self.alert_deadline else None

    @property
    def smtp_relay(self) -> tuple[str, int] | None:
        return _host_port(self.alert_smtp) if self.alert_smtp else None


def load_alert_config(overrides: Mapping[str, Any] | None = None) -> AlertConfig:
    return settings.build_config(AlertConfig, overrides)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"alert_smtp must be host:port, got {text!r}")
    return host, int(port)


def webhook_host(url: str) -> str:
    """What a log may say about a webhook: its scheme and host (the path of a chat webhook is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert: what happened (``summary``), why (``reason``), and where to look (``run_record``, ``log_url``)."""

    event: str  # task_failed | run_failed | run_late | gate_rejections | champion_stale | output_check_failed | drift
    summary: str
    reason: str
    date: str | None
    dag_id: str = DAG_ID
    run_id: str | None = None
    run_record: str | None = None  # runs/dt=D/run.json of the night
    log_url: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[{self.dag_id}] {self.date or 'unknown date'}: {self.summary}"

    def _facts(self) -> list[tuple[str, str]]:
        facts = [("DAG", self.dag_id), ("date", self.date or "unknown"), ("what happened", self.summary)]
        facts += [("run", self.run_id)] if self.run_id else []
        facts += [("run record", self.run_record)] if self.run_record else []
        facts += [("task log", self.log_url)] if self.log_url else []
        return facts

    def html(self) -> str:
        rows = "".join(
            f"<tr><th align='left'>{html.escape(k)}</th><td>{_link(v) if k in ('run record', 'task log') else html.escape(v)}</td></tr>"
            for k, v in self._facts()
        )
        return f"<table>{rows}</table><h4>Reason</h4><pre>{html.escape(self.reason)}</pre>"

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON: ``text`` for chat tools, the fields for machines."""
        return {
            "text": f"{self.subject}\n{self.reason}",
            **dataclasses.asdict(self),
            "subject": self.subject,
        }


def _link(target: str) -> str:
    href = target if "://" in target else f"file://{target}"
    return f"<a href='{html.escape(href)}'>{html.escape(target)}</a>"


def run_record(warehouse: str, date: str) -> str:
    """Where the night's run record lives (written when the night publishes)."""
    return f"{layout.dataset_dir(warehouse, 'runs', date)}/run.json"


# -- delivery -------------------------------------------------------------------------------------


def send(alert: Alert, config: AlertConfig | None = None) -> dict[str, bool]:
    """Deliver ``alert`` on every configured channel; ``{channel: delivered}`` (empty when alerting is off).

    Never raises: a channel that fails logs one warning naming the channel and the error.
    """
    try:
        config = config or load_alert_config()
    except ValueError as exc:
        log.warning("alert %r not sent: the alerting settings are invalid: %s", alert.subject, exc)
        return {}
    if not config.enabled:
        announce_off(config)
        log.debug("alert not sent (alerting is off): %s", alert.subject)
        return {}
    from vasp_model.pipeline import notifiers

    results = {}
    if config.recipients:
        target = f"{len(config.recipients)} recipient(s) via " + (
            f"SMTP relay {config.alert_smtp}"
            if config.smtp_relay
            else f"Airflow connection {config.alert_smtp_conn_id!r}"
        )
        results["email"] = _deliver(
            "email",
            target,
            alert,
            lambda: notifiers.send_mail(
                alert.subject,
                alert.html(),
                config.recipients,
                sender=config.alert_from,
                conn_id=config.alert_smtp_conn_id,
                relay=config.smtp_relay,
                timeout_s=config.alert_timeout_s,
            ),
        )
    if config.alert_webhook:
        target = webhook_host(config.alert_webhook)
        results["webhook"] = _deliver(
            "webhook",
            target,
            alert,
            lambda: notifiers.send_webhook(config.alert_webhook, alert.payload(), config.alert_timeout_s),
        )
    return results


def _deliver(channel: str, target: str, alert: Alert, deliver: Callable[[], None]) -> bool:
    try:
        deliver()
    except Exception as exc:  # unreachable, refused, rejected: a warning, never a failed night
        log.warning(
            "alert %r could not be sent by %s to %s: %s: %s (the pipeline goes on)",
            alert.subject,
            channel,
            target,
            type(exc).__name__,
            str(exc)[:300] or "no detail",
        )
        log.debug("alert delivery error", exc_info=True)
        return False
    log.info("alert sent by %s to %s: %s", channel, target, alert.subject)
    return True


def announce_off(config: AlertConfig | None = None) -> bool:
    """Log once per process that alerting is off and how to turn it on; True when it is off."""
    global _announced_off
    try:
        off = not (config or load_alert_config()).enabled
    except ValueError:
        return False
    if off and not _announced_off:
        log.info("alerting is off: %s", HOW_TO_TURN_ON)
        _announced_off = True
    return off


# -- what alerts ----------------------------------------------------------------------------------


def alert_flags(
    date: str, flags: Iterable[Mapping[str, Any]], config: AlertConfig | None = None, **where: str
) -> dict[str, bool]:
    """Alert on the drift flags of ``date``'s report (each a dict with at least ``rule`` and ``message``);
    one alert for all of them, none when there are none. ``where``: ``run_record`` (default: the date's
    run.json in ``VASP_WAREHOUSE``), ``run_id``, ``dag_id``."""
    from vasp_model.core.defaults import default_warehouse

    flags = [dict(f) for f in flags]
    for flag in flags:
        if "rule" not in flag or "message" not in flag:
            raise ValueError(f"a drift flag needs 'rule' and 'message', got keys {sorted(flag)}")
    if not flags:
        return {}
    rules = sorted({str(f["rule"]) for f in flags})
    where.setdefault("run_record", run_record(default_warehouse(), date))
    alert = Alert(
        event="drift",
        summary=f"drift flagged: {', '.join(rules)}",
        reason="\n".join(f"- {f['rule']}: {f['message']}" for f in flags),
        date=layout.check_date(date),
        details={"flags": flags},
        **where,
    )
    return send(alert, config)


def rejection_streak(warehouse: str, date: str) -> list[str]:
    """The dates of the run records up to ``date`` whose gate rejected the candidate, newest first, counted
    back from ``date`` until the first night that did not reject (nights without a run record are skipped)."""
    from vasp_model.data import storage

    streak = []
    for night in reversed([d for d in storage.published_dates(warehouse, "runs") if d <= date]):
        try:
            action = (storage.read_json(run_record(warehouse, night)).get("promotion") or {}).get("action")
        except (OSError, ValueError):
            log.warning("run record of %s is unreadable: the rejection streak stops there", night)
            break
        if action == "backfill":  # a past date re-run decided nothing: it neither breaks nor extends a streak
            continue
        if action != "rejected":
            break
        streak.append(night)
    return streak


def model_age_days(date: str, trained_for: str) -> int:
    return (dt.date.fromisoformat(date) - dt.date.fromisoformat(trained_for)).days


def check_night(
    record: Mapping[str, Any], warehouse: str, config: AlertConfig | None = None, run_id: str | None = None
) -> list[Alert]:
    """After a night published ``record`` (its run.json): alert on a gate rejection streak and on a stale
    serving model. Returns the alerts raised (sent when alerting is on). Never raises."""
    try:
        config = config or load_alert_config()
    except ValueError as exc:
        log.warning("the night's alert checks did not run: the alerting settings are invalid: %s", exc)
        return []
    announce_off(config)
    alerts: list[Alert] = []
    if (record.get("promotion") or {}).get("action") == "backfill":
        return alerts  # a past date re-run: streaks and the model's age are about the latest night
    try:
        date = record["date"]
        where = {"date": date, "run_record": run_record(warehouse, date), "run_id": run_id}
        streak = rejection_streak(warehouse, date)
        if len(streak) >= config.alert_reject_nights:
            reason = (record.get("promotion") or {}).get("reason", "")
            alerts.append(
                Alert(
                    event="gate_rejections",
                    summary=f"the gate rejected the candidate {len(streak)} nights in a row",
                    reason=f"rejected on {', '.join(reversed(streak))} (alert at {config.alert_reject_nights} "
                    f"nights in a row). Tonight: {reason}",
                    details={"nights": streak},
                    **where,
                )
            )
        if stale := _stale_serving(record, config):
            alerts.append(Alert(**stale, **where))
    except Exception as exc:
        log.warning("the night's alert checks failed (%s: %s); the pipeline goes on", type(exc).__name__, exc)
        log.debug("alert checks error", exc_info=True)
    for alert in alerts:
        send(alert, config)
    return alerts


def _stale_serving(record: Mapping[str, Any], config: AlertConfig) -> dict[str, Any] | None:
    """The fields of a stale-model alert when the model that served ``record``'s night was trained for a
    date ``alert_champion_max_age_days`` or more before it (its registered version's ``date`` tag)."""
    serving = record.get("serving") or {}
    name, version = serving.get("registered_model"), serving.get("version")
    if not name or not version:  # popularity serves: it is rebuilt every night
        return None
    from vasp_model.mlops.registry import client_for

    trained_for = client_for(record["tracking_uri"]).get_model_version(name, str(version)).tags.get("date")
    if not trained_for:
        return None
    age = model_age_days(record["date"], trained_for)
    if age < config.alert_champion_max_age_days:
        return None
    return {
        "event": "champion_stale",
        "summary": f"the serving model {name} v{version} is {age} days old",
        "reason": f"{name} v{version} ({serving.get('kind')}) was trained for {trained_for}, {age} days before "
        f"{record['date']} (alert at {config.alert_champion_max_age_days} days): no candidate has been promoted "
        "since.",
        "details": {"model": name, "version": str(version), "trained_for": trained_for, "age_days": age},
    }


# -- Airflow callbacks: the context in, an Alert out ----------------------------------------------


def _night_of(params: Mapping[str, Any] | None, logical_date, run_after) -> tuple[str | None, str | None]:
    """(date, run record) of a run from its params/conf and dates, as the DAG's plan resolves them."""
    from vasp_model.pipeline.plan import load_config, make_plan

    try:
        config = load_config()
        plan = make_plan(dict(params or {}), _as_datetime(logical_date), _as_datetime(run_after), config=config)
    except Exception as exc:  # a broken conf must not stop the alert
        log.debug("date of the alert unknown: %s", exc)
        return None, None
    return plan.date, run_record(plan.warehouse, plan.date)


def _as_datetime(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _reason(exception: BaseException | str | None) -> str:
    if exception is None:
        return "no error was recorded; see the task log"
    if isinstance(exception, BaseException):
        return f"{type(exception).__name__}: {exception}"[:MAX_REASON]
    return str(exception)[:MAX_REASON]


def from_task_context(event: str, context: Mapping[str, Any]) -> Alert:
    """The alert of a failed task (``on_failure_callback``) or run (the DAG's ``on_failure_callback``)."""
    ti, dag_run, dag = context.get("ti"), context.get("dag_run"), context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or DAG_ID
    date, record = _night_of(context.get("params"), context.get("logical_date"), getattr(dag_run, "run_after", None))
    task_id = getattr(ti, "task_id", None)
    details = {"task_id": task_id, "try_number": getattr(ti, "try_number", None)}
    if event == "run_failed":
        summary = f"run failed (task {task_id} failed)" if task_id else "run failed"
        reason = (
            f"the run ended failed ({context.get('reason', 'failed')}); failed task: {task_id or 'unknown'}. "
            "Nothing after it was published for this date; the champion is unchanged unless promote_model finished."
        )
    elif event == "output_check_failed":
        summary = f"output check failed ({task_id})"
        reason = _reason(context.get("exception"))
    else:
        summary = f"task {task_id} failed"
        reason = _reason(context.get("exception"))
    if record and not _exists(record):
        details["run_record"] = "not written: the night did not publish"
    return Alert(
        event=event,
        summary=summary,
        reason=reason,
        date=date,
        dag_id=dag_id,
        run_id=context.get("run_id") or getattr(dag_run, "run_id", None),
        run_record=record,
        log_url=getattr(ti, "log_url", None),
        details=details,
    )


def from_deadline_context(context: Mapping[str, Any], deadline: str = "") -> Alert:
    """The alert of a missed deadline: ``context`` as the scheduler gives a deadline callback
    (``{"dag_run": <the REST API's DAG run, as JSON>, "deadline": {"deadline_time": ...}}``)."""
    dag_run = context.get("dag_run") or {}
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    deadline_time = (context.get("deadline") or {}).get("deadline_time")
    date, record = _night_of(dag_run.get("conf"), dag_run.get("logical_date"), dag_run.get("run_after"))
    return Alert(
        event="run_late",
        summary=f"run not finished by its deadline {deadline_time}",
        reason=f"the run {run_id} (state {dag_run.get('state')}) was queued at {dag_run.get('queued_at')} "
        f"and had not finished {deadline or 'its allowed time'} later; the night's lists may be late.",
        date=date,
        dag_id=dag_run.get("dag_id") or DAG_ID,
        run_id=run_id,
        run_record=record,
        details={"deadline_time": str(deadline_time), "state": dag_run.get("state")},
    )


async def on_deadline_missed(context: Mapping[str, Any] | None = None, deadline: str = "", **_: Any) -> None:
    """The DAG's deadline callback (runs in the triggerer): alert that the run is late."""
    import asyncio

    alert = from_deadline_context(context or {}, deadline)
    await asyncio.to_thread(send, alert)


def _exists(path: str) -> bool:
    return "://" in path or os.path.exists(path)  # remote records: assume there, the link says where
