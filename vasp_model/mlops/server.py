"""Talking to a remote MLflow tracking server: bounded retries, credentials, and one clear error.

The HTTP client is MLflow's own: its retries with exponential backoff and its request timeout come
from ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` /
``MLFLOW_HTTP_REQUEST_TIMEOUT``. :func:`configure_http_client` sets the pipeline's defaults for the
ones the environment leaves unset (a night gives up on a dead server in about a minute, not MLflow's
four). Credentials of a server behind MLflow's basic-auth app come from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (MLflow's client reads them); nothing here prints or logs them, and
:func:`redacted` strips any ``user:password@`` from a URI before it is shown or recorded.

:func:`check_reachable` asks the server an authenticated question once (a few quick tries) before a
stage spends time, and :func:`tracking_step` turns a failure to reach the server during a step into a
:class:`TrackingServerError`: one line naming the server and the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator

from vasp_model.core.errors import TrackingServerError

log = logging.getLogger(__name__)

# The pipeline's defaults for MLflow's HTTP client (the environment wins): 5 retries with backoff
# 0, 4, 8, 16, 32 s, each request waiting at most 60 s for an answer.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
CREDENTIALS_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_CONNECTION_SIGNS = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Read timed out",
    "RemoteDisconnected",
    "Connection aborted",
    "Connection reset",
    "too many 5",  # urllib3: "too many 500 error responses"
)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def redacted(uri: str) -> str:
    """``uri`` without any ``user:password@`` part (safe to print, log and record)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def configure_http_client() -> None:
    """Set the pipeline's retry/backoff/timeout defaults for MLflow's HTTP client where the environment has none."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _retry_settings() -> str:
    names = ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT")
    values = (os.environ.get(f"MLFLOW_HTTP_REQUEST_{n}", HTTP_DEFAULTS[f"MLFLOW_HTTP_REQUEST_{n}"]) for n in names)
    retries, backoff, timeout = values
    return f"{retries} retries, backoff factor {backoff}, {timeout} s timeout; MLFLOW_HTTP_REQUEST_* set them"


def _auth() -> tuple[str, str] | None:
    user, password = (os.environ.get(name) for name in CREDENTIALS_ENV)
    return (user, password or "") if user else None


def _probe(uri: str, timeout: float) -> tuple[int | None, str]:
    """(HTTP status, problem) of one authenticated read of ``uri`` (status None: no answer)."""
    import requests

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(url, params={"max_results": 1}, auth=_auth(), timeout=timeout)
    except requests.RequestException as exc:
        return None, _short(exc)
    return response.status_code, f"HTTP {response.status_code}"


def _short(exc: BaseException) -> str:
    """The innermost readable reason of a requests/urllib3 failure (e.g. ``Connection refused``)."""
    text = str(exc)
    for sign in ("Connection refused", "Read timed out", "timed out", "Name or service not known"):
        if sign in text:
            return sign
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _refusal(uri: str, status: int, doing: str) -> TrackingServerError:
    who = "no credentials" if _auth() is None else f"the credentials of user {os.environ['MLFLOW_TRACKING_USERNAME']!r}"
    return TrackingServerError(
        f"MLflow tracking server {redacted(uri)} refused {who} (HTTP {status}) while {doing}: "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or the Airflow connection)"
    )


def check_reachable(uri: str, doing: str, attempts: int = 3) -> None:
    """Fail fast, before a stage spends time, when the server at ``uri`` does not answer or refuses us.

    A few quick tries (1, 2 s apart), each waiting at most 10 s (or ``MLFLOW_HTTP_REQUEST_TIMEOUT`` if
    shorter); a local store (``sqlite:``, ``file:``) is always reachable.
    """
    if not is_remote(uri):
        return
    timeout = min(10.0, float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 10))
    problem = ""
    for attempt in range(attempts):
        status, problem = _probe(uri, timeout)
        if status in (401, 403):
            raise _refusal(uri, status, doing)
        if status is not None and status < 500:
            return
        if attempt + 1 < attempts:
            time.sleep(attempt + 1)
    raise TrackingServerError(
        f"MLflow tracking server {redacted(uri)} is not reachable ({problem}) while {doing}; "
        f"nothing was registered or published (tried {attempts} times)"
    )


def ready_for(uri: str, doing: str) -> None:
    """What a stage calls before it spends time: the HTTP client's defaults (:func:`configure_http_client`),
    then :func:`check_reachable`."""
    configure_http_client()
    check_reachable(uri, doing)


def _is_connection_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(sign in text for sign in _CONNECTION_SIGNS)


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status of an MLflow REST failure (``... failed with error code 401 != 200``), if any."""
    import re

    match = re.search(r"error code (\d{3}) != 200", str(exc))
    return int(match.group(1)) if match else None


@dataclasses.dataclass
class Step:
    """What a :func:`tracking_step` block is doing now (set ``doing`` as the block moves on)."""

    doing: str


@contextlib.contextmanager
def tracking_step(uri: str, doing: str) -> Iterator[Step]:
    """Turn a failure to reach (or to be let in by) the server at ``uri`` during the block into one clear
    :class:`TrackingServerError` naming the server and what the block was doing (its :class:`Step`).
    Other errors pass through: a failure is the server's when its text says so, or when it came from the
    HTTP client or MLflow and the server does not answer one probe right afterwards."""
    step = Step(doing)
    if not is_remote(uri):
        yield step
        return
    try:
        yield step
    except TrackingServerError:
        raise
    except Exception as exc:
        status = _status_of(exc)
        if status in (401, 403):
            raise _refusal(uri, status, step.doing) from exc
        if not _is_connection_failure(exc):
            from_client = type(exc).__module__.split(".")[0] in ("mlflow", "requests", "urllib3")
            if not from_client or _probe(uri, timeout=5.0)[0] is not None:
                raise
        log.debug("tracking server failure while %s", step.doing, exc_info=exc)
        raise TrackingServerError(
            f"MLflow tracking server {redacted(uri)} did not answer while {step.doing} "
            f"(gave up after {_retry_settings()}): {_short(exc)}"
        ) from exc
