"""Real alert targets on 127.0.0.1 for tests: an SMTP server (aiosmtpd) and a webhook endpoint
(stdlib ``http.server``), each in a thread on a free port and stopped in the fixture's finalizer.

Import the fixtures into a test module: ``from alert_servers import smtp_server, webhook_server``.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _import_airflow() -> None:
    """Airflow configures logging when first imported: import it (the SMTP provider sends the mail)
    before the test runs, so that caplog sees the test's logs."""
    import airflow.providers.smtp.notifications.smtp  # noqa: F401


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mailbox:
    """What the SMTP server received: parsed messages with their envelope, and the AUTH logins seen."""

    def __init__(self):
        self.messages: list[dict] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        html = "".join(
            part.get_content() for part in message.walk() if part.get_content_type() in ("text/html", "text/plain")
        )
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "subject": message["subject"], "body": html}
        )
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        self.logins.append(auth_data.login.decode())
        ok = auth_data.login == b"alerts" and auth_data.password == b"s3cret-pw"
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 on failure


@contextlib.contextmanager
def running_smtp_server():
    """A real SMTP server on 127.0.0.1 (AUTH allowed without TLS) while the block runs: ``(host, port, mailbox)``."""
    from aiosmtpd.controller import Controller

    _import_airflow()
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=mailbox.authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield "127.0.0.1", port, mailbox
    finally:
        controller.stop()


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 for one test: ``(host, port, mailbox)``."""
    with running_smtp_server() as server:
        yield server


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(
            {"path": self.path, "type": self.headers.get("Content-Type"), "json": json.loads(body)}
        )
        status = 500 if self.path.startswith("/broken") else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def webhook_server():
    """A real HTTP server on 127.0.0.1 that records JSON POSTs (``/broken...`` answers 500): ``(base URL, received)``."""
    _import_airflow()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
