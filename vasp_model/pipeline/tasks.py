"""The callables the nightly DAG wires (``dags/vasp_nightly.py``).

Each runs one stage in this process, calling the stage's function with the config the run's
:class:`~vasp_model.pipeline.plan.Plan` gives it (no command line in between), and works on one
logical date ``D``. Only the plan, URIs and small dicts go between tasks.

Imported when the DAG file is parsed: nothing heavy at module level (no airflow, pyspark,
tensorflow, keras, mlflow, pyarrow); the stages are imported inside the callables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from vasp_model.pipeline.plan import Plan
from vasp_model.pipeline.stages import STAGES

log = logging.getLogger(__name__)


def sign_in_to_mlflow(conn_id: str | None = None) -> None:
    """MLflow's client credentials for a task's stage: ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` from the
    environment, else the login/password of the Airflow connection ``conn_id`` (default: the config's
    ``mlflow_conn_id``, ``VASP_MLFLOW_CONN_ID``) when it exists. The password goes to Airflow's secrets
    masker, so a task log shows ``***`` wherever it would appear."""
    if conn_id is None:
        from vasp_model.pipeline.plan import load_config

        conn_id = load_config().mlflow_conn_id
    if conn_id and not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        try:
            from airflow.sdk import Connection

            connection = Connection.get(conn_id)
        except Exception as exc:  # not defined (or no Airflow here): the environment's credentials, if any
            log.debug("no Airflow connection %r for MLflow: %s", conn_id, exc)
            connection = None
        if connection is not None and connection.login:
            os.environ["MLFLOW_TRACKING_USERNAME"] = connection.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = connection.password or ""
    if password := os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        try:
            from airflow.sdk.log import mask_secret

            mask_secret(password)
        except ImportError:  # pragma: no cover - the DAG always has Airflow
            pass


def prepare_input(plan: Plan) -> Plan:
    """Generate the date's synthetic input (deterministic, so re-runs rewrite the same file)."""
    if plan.synthetic:
        from vasp_jobs.synth import synth_stage

        synth_stage(plan.synth_config())
    else:
        log.info("input for %s is %s; nothing to generate", plan.date, plan.input)
    return plan


def input_available(input_uri: str) -> bool:
    """Sensor poke: is the input there (a file, or a non-empty directory)?"""
    from pyarrow import fs as pafs

    from vasp_model.data import storage

    filesystem, path = storage.resolve(input_uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return info.size > 0
    if info.type == pafs.FileType.Directory:
        return bool(filesystem.get_file_info(pafs.FileSelector(path, recursive=False)))
    log.info("input %s is not there yet", input_uri)
    return False


def missing_input_message(date: str, input_uri: str, timeout_s: int) -> str:
    return (
        f"input for {date} never arrived: {input_uri} did not exist within {timeout_s} s of waiting. "
        "Nothing was built, trained, promoted or published for this date; the champion is unchanged."
    )


def on_input_missing(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the input sensor: say plainly what happened."""
    task = context.get("task")
    plan = context["ti"].xcom_pull(task_ids="prepare_input")
    timeout = int(getattr(task, "timeout", 0) or 0)
    date, input_uri = (plan.date, plan.input) if plan is not None else ("?", "?")
    log.error(missing_input_message(date, input_uri, timeout))


def _spark_in_process() -> None:
    # In-process Spark: its Python workers must be this interpreter (the one with the package
    # and pyarrow), not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def build(plan: Plan) -> str:
    """Stage ``build``: publish ``features/dt=D``; returns its URI."""
    from vasp_jobs.build_matrices import build_stage

    _spark_in_process()
    build_stage(plan.build_config())
    _require_published(plan.features, "build")
    return plan.features


def tune(plan: Plan) -> str:
    """Stage ``tune`` on the nights the plan tunes (``tune`` weekly on its weekday, or nightly), publishing
    ``tuning/dt=D``; returns its URI. Other nights the task is skipped."""
    if not plan.tunes_tonight:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"tune={plan.tune} (weekday {plan.tune_weekday}): {plan.date} is not tuned")
    sign_in_to_mlflow()
    from vasp_model.pipeline.tuning import tune_stage

    tune_stage(plan.tune_config())
    _require_published(plan.tuning, "tune")
    return plan.tuning


def train(plan: Plan) -> str:
    """Stage ``train``: train + evaluate + log to MLflow, publish ``models/dt=D``; returns its URI. With
    tuning on it starts from the latest tuned config (:meth:`Plan.tuned`)."""
    sign_in_to_mlflow()
    from vasp_model.pipeline.training import train_stage

    train_stage(plan.train_config())
    _require_published(plan.models, "train")
    return plan.models


def promote(plan: Plan) -> dict[str, Any]:
    """Stage ``promote``: the registry gate; returns the decision as a dict (XCom, run record).

    A rejected candidate is a decision, not a failure: the champion serves, or with none yet the
    fallback (EASE of its own registered model, else popularity), which the decision names.
    """
    sign_in_to_mlflow()
    from vasp_model.pipeline.promotion import promote_stage

    decision = promote_stage(plan.promote_config())
    log.info("promotion decision for %s: %s", plan.date, decision.to_json())
    return dataclasses.asdict(decision)


def score(plan: Plan) -> str:
    """Stage ``score``: publish ``recommendations/dt=D`` from the champion (or the fallback; a past date: the
    version that served it); returns its URI."""
    sign_in_to_mlflow()
    from vasp_jobs.score import score_stage

    _spark_in_process()
    score_stage(plan.score_config())
    _require_published(plan.recommendations, "score")
    return plan.recommendations


def spark_argv(stage: str, plan: Plan) -> list[str]:
    """The ``spark-submit`` arguments of Spark stage ``stage`` for this run (the DAG's submit mode)."""
    configs = {"build": plan.build_config, "score": plan.score_config}
    if stage not in configs:
        raise ValueError(f"stage must be one of {sorted(configs)}, got {stage!r}")
    return STAGES[stage].argv(configs[stage]())


def _require_published(uri: str, stage: str) -> None:
    from vasp_model.data import storage

    if not storage.is_published(uri):
        raise RuntimeError(f"vasp {stage} finished but {uri} is not published (no _SUCCESS)")


def publish(plan: Plan, decision: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run record ``runs/dt=D/run.json`` (atomically; replaces only this date's record); ``serving``
    is the model the lists were scored with (kind vasp | ease | popularity, registered model, version)."""
    from vasp_model.data import storage
    from vasp_model.mlops.server import redacted

    lists = storage.read_json(f"{plan.recommendations}/{storage.MANIFEST}")
    summary = {
        "date": plan.date,
        "input": plan.input,
        "features": plan.features,
        "models": plan.models,
        "recommendations": plan.recommendations,
        "tracking_uri": redacted(plan.tracking_uri),  # never a user:password@ of the URI
        "promotion": dict(decision),
        "serving": lists.get("serving"),
        "serving_reason": lists.get("serving_reason", ""),  # a past date: why it was scored with what it was
        "checks": dict(checks),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with storage.staged(plan.runs) as staging:
        storage.write_json(f"{staging}/run.json", summary)
        storage.publish(staging, plan.runs)
    return summary


def report(plan: Plan) -> dict[str, Any]:
    """Stage ``report``: the morning report and its drift flags (XCom: ``flags``, ``report``, ``seconds``).

    Never fails the night: the lists are published by now, so a report that cannot be made is logged
    and returned with ``error`` (and no flags) instead.
    """
    from vasp_model.pipeline.drift import load_drift_config
    from vasp_model.pipeline.report import ReportStageConfig, report_stage

    try:
        config = ReportStageConfig(plan.date, plan.warehouse, plan.tracking_uri, load_drift_config())
        return report_stage(config)
    except Exception as exc:  # noqa: BLE001 - the night's outputs stand whatever happens to its report
        log.error(
            "the morning report of %s could not be made: %s", plan.date, exc, exc_info=log.isEnabledFor(logging.DEBUG)
        )
        return {"date": plan.date, "report": None, "flags": [], "error": str(exc)}
