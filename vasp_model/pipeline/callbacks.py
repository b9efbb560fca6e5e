"""The nightly DAG's alert callbacks, as Airflow wires them.

* :class:`NightlyAlert` — a notifier for ``on_failure_callback`` (task and run level): turns the
  Airflow context into an :class:`~vasp_model.pipeline.alerts.Alert` and sends it; never raises. A
  failed night alerts once: the run's alert stays quiet when the task that failed it alerted already.
* :func:`deadline_alert` — the DAG's Airflow deadline alert when ``VASP_ALERT_DEADLINE`` is set: a run
  not finished that long after it was queued calls :func:`vasp_model.pipeline.alerts.on_deadline_missed`
  in the triggerer.

Imported when the DAG file is parsed: airflow.sdk only.
"""

from __future__ import annotations

import datetime as dt
import logging

from airflow.sdk import BaseNotifier

from vasp_model.pipeline import alerts

log = logging.getLogger(__name__)


class NightlyAlert(BaseNotifier):
    """The DAG's failure callback: ``event`` is ``task_failed``, ``run_failed`` or ``output_check_failed``."""

    def __init__(self, event: str = "task_failed", **kwargs):
        super().__init__(**kwargs)
        self.event = event

    def render_template_fields(self, context, jinja_env=None) -> None:
        """Nothing is templated (the alert is built from the context); and under ``dag.test()`` a run
        callback's ``dag`` is the serialized DAG, which has no template environment to render with."""

    def notify(self, context) -> None:
        if self.event == "run_failed" and failing_task_alerted(context):
            log.info("run failed at task %s, whose own alert says why: no second alert", context["ti"].task_id)
            return
        try:
            alert = alerts.from_task_context(self.event, context)
        except Exception as exc:  # a callback never turns into a second failure
            log.warning("could not describe the %s alert (%s: %s); none sent", self.event, type(exc).__name__, exc)
            return
        alerts.send(alert)


def failing_task_alerted(context) -> bool:
    """Whether the task that failed the run (a run callback's ``ti``) alerted itself: it has a
    :class:`NightlyAlert`, or — a serialized task, which keeps only that it has failure callbacks, as
    under ``dag.test()`` — any failure callback (in the nightly DAG each includes a NightlyAlert)."""
    if context.get("reason") != "task_failure":  # e.g. all_tasks_deadlocked: no task said anything
        return False
    task = getattr(context.get("ti"), "task", None)
    callbacks = getattr(task, "on_failure_callback", None)
    if callbacks is None:
        return bool(getattr(task, "has_on_failure_callback", False))
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return any(isinstance(callback, NightlyAlert) for callback in callbacks)


def deadline_alert(config: alerts.AlertConfig):
    """The DAG's ``deadline``: None without ``alert_deadline``."""
    seconds = config.deadline_seconds
    if seconds is None:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,  # a backfill of an old date is not late at once
        interval=dt.timedelta(seconds=seconds),
        callback=AsyncCallback(alerts.on_deadline_missed, kwargs={"deadline": config.alert_deadline}),
        name="vasp_nightly_late",
    )
