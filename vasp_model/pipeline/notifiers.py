"""The Airflow notifiers alerts leave through: mail by the SMTP provider's ``SmtpNotifier``
(:func:`send_mail`), JSON by :class:`WebhookNotifier` (Slack/Teams-style incoming webhooks take
``text``; usable on its own as any task's callback). Raise on failure: :mod:`vasp_model.pipeline.alerts`
turns that into one warning.

Imports airflow.sdk; the SMTP provider is imported when mailing.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

RELAY_CONN_ID = "vasp_alert_relay"
DEFAULT_SENDER = "vasp-nightly@localhost"


class WebhookNotifier(BaseNotifier):
    """POST ``payload`` (templated) as JSON to ``url``; an HTTP error status raises."""

    template_fields = ("url", "payload")

    def __init__(self, url: str, payload: dict[str, Any] | None = None, timeout_s: float = 10, **kwargs):
        super().__init__(**kwargs)
        self.url = url
        self.payload = payload
        self.timeout_s = timeout_s

    def notify(self, context) -> None:
        payload = self.payload
        if payload is None:
            dag_run = context.get("dag_run")
            ti = context.get("ti")
            payload = {
                "text": f"{getattr(dag_run, 'dag_id', '?')} {getattr(dag_run, 'run_id', '?')}: "
                f"{getattr(ti, 'task_id', 'run')} {getattr(ti, 'state', '')}".strip()
            }
        post_json(self.url, payload, self.timeout_s)


def post_json(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (an http(s) URL: checked in AlertConfig)
        response.read()


def send_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    WebhookNotifier(url, payload, timeout_s=timeout_s).notify({})


def send_mail(
    subject: str,
    html: str,
    recipients: list[str],
    *,
    sender: str = "",
    conn_id: str = "smtp_default",
    relay: tuple[str, int] | None = None,
    timeout_s: float = 10,
) -> None:
    """Mail through the SMTP provider's notifier: via ``relay`` (host, port: no TLS, no login) or the
    Airflow SMTP connection ``conn_id`` (host, TLS, login/password, from_email)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        to=recipients,
        from_email=sender or (DEFAULT_SENDER if relay else None),
        subject=subject,
        html_content=html,
        smtp_conn_id=RELAY_CONN_ID if relay else conn_id,
    )
    if relay:
        notifier.hook = _relay_hook(*relay, timeout_s=timeout_s)  # the cached_property's value
    try:
        notifier.notify({})
    except ValueError as exc:  # the connection names no sender
        raise ValueError(f"{exc} (or set VASP_ALERT_FROM)") from None


def _relay_hook(host: str, port: int, timeout_s: int):
    """An SmtpHook for a plain relay at host:port, without an Airflow connection."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import Connection

    extra = {"disable_tls": True, "disable_ssl": True, "timeout": timeout_s, "retry_limit": 0}
    connection = Connection(conn_id=RELAY_CONN_ID, conn_type="smtp", host=host, port=port, extra=json.dumps(extra))

    class RelayHook(SmtpHook):
        def get_connection(self, conn_id):  # type: ignore[override]
            return connection

    return RelayHook(smtp_conn_id=RELAY_CONN_ID)
