"""The nightly DAG parses cleanly, has the expected graph, and every task is hardened."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vasp_model.pipeline import plan

DAGS = Path(__file__).resolve().parents[2] / "dags"

EXPECTED_EDGES = {
    "prepare_input": {"wait_for_input"},
    "wait_for_input": {"build_features"},
    "build_features": {"tune_model"},
    "tune_model": {"train_model"},
    "train_model": {"promote_model"},
    "promote_model": {"score_users"},
    "score_users": {"validate_recommendations"},
    "validate_recommendations": {"publish_assets"},
    "publish_assets": {"morning_report"},
    "morning_report": set(),
}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "vasp_nightly" in dagbag.dags


def test_task_graph(nightly_dag):
    assert set(nightly_dag.task_dict) == set(EXPECTED_EDGES)
    for task_id, downstream in EXPECTED_EDGES.items():
        actual = nightly_dag.get_task(task_id).downstream_task_ids
        # prepare_input also feeds the plan to later tasks via XCom; the chain edges must all exist
        assert downstream <= actual, (task_id, actual)
    # a straight line: every task's upstream is a subset of what comes before it
    order = list(EXPECTED_EDGES)
    for i, task_id in enumerate(order):
        assert nightly_dag.get_task(task_id).upstream_task_ids <= set(order[:i]), task_id


def test_schedule_and_dag_settings(nightly_dag):
    from airflow.sdk import CronDataIntervalTimetable

    cfg = plan.load_config()
    assert isinstance(nightly_dag.timetable, CronDataIntervalTimetable)
    assert nightly_dag.timetable.expression == cfg.schedule
    assert str(nightly_dag.timetable.timezone) == cfg.timezone
    assert nightly_dag.catchup is False
    assert nightly_dag.max_active_runs == 1
    assert {"vasp", "nightly"} <= set(nightly_dag.tags)
    assert nightly_dag.doc_md and "vasp_nightly" in nightly_dag.doc_md
    params = nightly_dag.params.dump()
    assert params["input"] == cfg.input == "synthetic"
    assert params["preset"] == cfg.preset
    assert params["top_n"] == cfg.top_n
    assert params["threshold"] == cfg.threshold
    assert params["min_user_interactions"] == cfg.min_user_interactions
    assert params["tune"] == cfg.tune == "off"
    assert params["fit_budget"] == cfg.fit_budget


def test_training_follows_a_skipped_tuning(nightly_dag, tmp_path):
    from airflow.sdk.exceptions import AirflowSkipException

    from vasp_model.pipeline import tasks

    assert nightly_dag.get_task("train_model").trigger_rule == "none_failed"
    assert nightly_dag.get_task("tune_model").trigger_rule == "all_success"
    cfg = plan.load_config({"warehouse": str(tmp_path / "wh"), "tune_weekday": "sun"})
    monday = plan.make_plan({"tune": "weekly"}, dt.datetime(2026, 3, 9), config=cfg)
    with pytest.raises(AirflowSkipException, match="2026-03-09 is not tuned"):
        tasks.tune(monday)


def test_every_task_has_retries_backoff_and_timeout(nightly_dag):
    for task in nightly_dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff > 1, task.task_id
        assert task.max_retry_delay is not None, task.task_id
        assert isinstance(task.execution_timeout, dt.timedelta), task.task_id
        assert task.execution_timeout.total_seconds() > 0, task.task_id
    sensor = nightly_dag.get_task("wait_for_input")
    assert 0 < sensor.timeout <= 24 * 3600
    assert sensor.mode in ("poke", "reschedule")


def test_assets_are_published_only_at_the_end(nightly_dag):
    outlets = {t.task_id: {a.name for a in t.outlets} for t in nightly_dag.tasks if t.outlets}
    assert outlets == {"publish_assets": {"vasp_features", "vasp_recommendations"}}


def _parse_in_subprocess(tmp_path, extra_env: dict[str, str]) -> dict:
    """Parse the DAG folder in a fresh interpreter where any DB, connection or Variable access fails."""
    script = textwrap.dedent(
        """
        import json, sys

        def forbidden(*args, **kwargs):
            raise AssertionError("DAG parsing must not read connections or variables")

        import airflow.sdk
        from airflow.sdk import BaseHook, Variable
        BaseHook.get_connection = classmethod(forbidden)
        Variable.get = staticmethod(forbidden)
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=sys.argv[1])
        dag = bag.dags.get("vasp_nightly")
        heavy = sorted(m for m in ("pyspark", "tensorflow", "keras", "mlflow", "pyarrow", "pandas", "jax")
                       if m in sys.modules)
        print(json.dumps({
            "errors": {k: str(v) for k, v in bag.import_errors.items()},
            "tasks": sorted(dag.task_dict) if dag else [],
            "types": {t.task_id: type(t).__name__ for t in dag.tasks} if dag else {},
            "heavy": heavy,
            "train": {"pool": dag.get_task("train_model").pool, "queue": dag.get_task("train_model").queue}
            if dag else {},
        }))
        """
    )
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        # a database that cannot even be opened: any metadata DB access during parsing fails
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/no/such/dir/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **extra_env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, str(DAGS)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("spark_mode", ["local", "submit"])
def test_parsing_is_light_and_offline(tmp_path, spark_mode):
    result = _parse_in_subprocess(tmp_path, {"VASP_SPARK_MODE": spark_mode})
    assert result["errors"] == {}
    assert result["tasks"] == sorted(EXPECTED_EDGES)
    assert result["heavy"] == [], f"parsing imported heavy modules: {result['heavy']}"
    spark_type = "SparkSubmitOperator" if spark_mode == "submit" else "_PythonDecoratedOperator"
    assert result["types"]["build_features"] == spark_type
    assert result["types"]["score_users"] == spark_type
    assert result["types"]["wait_for_input"] == "PythonSensor"


def test_gpu_pool_and_queue_come_from_config(tmp_path):
    result = _parse_in_subprocess(tmp_path, {"VASP_GPU_POOL": "gpu", "VASP_GPU_QUEUE": "gpu_queue"})
    assert result["errors"] == {}
    assert result["train"] == {"pool": "gpu", "queue": "gpu_queue"}
    default = _parse_in_subprocess(tmp_path, {})
    assert default["train"]["pool"] == "default_pool"


def test_submit_mode_passes_the_stage_argv(tmp_path, monkeypatch):
    """In submit mode spark-submit gets the job's script and the arguments rendered from the run's plan."""
    monkeypatch.setenv("VASP_SPARK_MODE", "submit")
    monkeypatch.setenv("VASP_WAREHOUSE", str(tmp_path / "wh"))
    from airflow.dag_processing.dagbag import DagBag

    from vasp_model.pipeline import tasks

    dag = DagBag(dag_folder=str(DAGS)).dags["vasp_nightly"]
    build = dag.get_task("build_features")
    assert build.application.endswith("jobs/build_matrices.py")
    assert build._conn_id == "spark"
    assert dag.render_template_as_native_obj
    night = plan.make_plan({"top_n": 3}, dt.datetime(2026, 3, 1), config=plan.load_config())
    template = dag.get_template_env().from_string(build.application_args)
    argv = template.render(spark_argv=tasks.spark_argv, ti=_PlanXCom(night))
    assert argv == tasks.spark_argv("build", night)
    assert argv[:4] == ["--date", "2026-03-01", "--warehouse", str(tmp_path / "wh")]
    score = dag.get_task("score_users")
    rendered = (
        dag.get_template_env()
        .from_string(score.application_args)
        .render(spark_argv=tasks.spark_argv, ti=_PlanXCom(night))
    )
    assert rendered[rendered.index("--top-n") + 1] == "3"


class _PlanXCom:
    """The part of a task instance the templates use: the plan prepare_input pushed."""

    def __init__(self, night):
        self.night = night

    def xcom_pull(self, task_ids):
        assert task_ids == "prepare_input"
        return self.night


def test_the_plan_crosses_xcom_through_airflows_serialization(nightly_dag, tmp_path):
    """Parsing the DAG allows the Plan class; Airflow's XCom serde turns it into JSON and back."""
    import json

    from airflow.sdk.serde import deserialize, serialize

    night = plan.make_plan({}, dt.datetime(2026, 3, 1), config=plan.load_config({"warehouse": str(tmp_path)}))
    assert deserialize(json.loads(json.dumps(serialize(night)))) == night
