"""
### vasp_nightly — nightly VASP recommendations for every user

Each run owns one logical date `D` (the day before the run time, in the configured time
zone) and rebuilds exactly that date's partitions; re-running or backfilling a date
replaces only that date.

1. **prepare_input** — resolve `D`, the input URI and the run's choices (the typed
   `Plan`, passed on through XCom; every stage's config is built from it); with the default
   `synthetic` input, write the date's synthetic interaction file first.
2. **wait_for_input** — sensor: fails clearly if the input never arrives within
   `VASP_INPUT_TIMEOUT_S`; nothing downstream runs, nothing is published. With an event log
   (`input` = `events:DIR`) it waits for the date's partition `DIR/dt=D/`.
3. **build_features** (Spark, `vasp build`) → `features/dt=D/`.
4. **tune_model** (`vasp tune`; skipped unless the `tune` Param says so: `weekly` on
   `VASP_TUNE_WEEKDAY`, or `nightly`) → `tuning/dt=D/`, the config chosen on validation
   users within `VASP_TUNE_BUDGET`; then **train_model** (`vasp train`, in the `gpu`
   pool/queue when configured; with tuning on, from the latest tuned config) → MLflow run +
   `models/dt=D/`.
5. **promote_model** (`vasp promote`) — the registry gate. A rejected candidate is *not* a
   failed night: scoring then uses the unchanged champion and the decision (with its
   reason) is recorded in XCom and in `runs/dt=D/run.json`. With no champion yet, the
   fallback serves (the date's EASE, registered as `vasp-ease`, else popularity).
6. **score_users** (Spark, `vasp score`) → `recommendations/dt=D/` from `vasp@champion`
   (or the fallback the decision names). A past date (a backfill, or a rerun once a later
   night is recorded) moves no alias (decision `backfill`) and is scored with the version
   that served it, so its lists come out the same, byte for byte.
7. **validate_recommendations** — every user present, N items each, none of the items the
   `exclude` rule leaves out (default `all`: anything the user interacted with, whatever the
   rating), counts match the manifest.
8. **publish_assets** — emits the `vasp_features` and `vasp_recommendations` Assets
   (data-aware downstream DAGs schedule on them) and writes `runs/dt=D/run.json`.
9. **morning_report** (`vasp report`) — `runs/dt=D/report.html` (one self-contained file, also
   logged to the night's MLflow run) and the drift rules' flags (`VASP_DRIFT_*` thresholds), which
   go to `run.json`, this task's XCom and alerting. It never fails the night: a missing previous night is
   reported as unavailable, and a report that cannot be made is logged and returned as `error`.

Configuration comes from `VASP_*` environment variables (`vasp_model.pipeline.plan.NightlyConfig`):
`VASP_SCHEDULE`, `VASP_TIMEZONE`, `VASP_WAREHOUSE`, `VASP_TRACKING_URI`,
`VASP_SPARK_MODE=local|submit` (submit: `SparkSubmitOperator` on the `spark` connection),
`VASP_GPU_POOL`, `VASP_GPU_QUEUE`, retries and timeouts. Run-level choices are Params.
Alerting (off by default; `VASP_ALERT_*`, `vasp_model.pipeline.alerts`): failed tasks and runs, a late
run (deadline alert), rejection streaks, a stale model, a failed output check, drift flags.
A run triggered without a logical date processes the day before it runs (or the `date` Param).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, chain, task
from airflow.sdk.serde import allow_class

from vasp_model.core.config import PRESETS
from vasp_model.core.defaults import EXCLUDE_RULES
from vasp_model.pipeline import alerts, checks, tasks
from vasp_model.pipeline.callbacks import NightlyAlert, deadline_alert
from vasp_model.pipeline.plan import TUNE_MODES, Plan, load_config, make_plan
from vasp_model.pipeline.stages import STAGES

CFG = load_config()
ALERTS = alerts.load_alert_config()
PLAN = "ti.xcom_pull(task_ids='prepare_input')"
allow_class(Plan)  # the plan crosses XCom as a dataclass (JSON), deserialized back into a Plan


def _asset_uri(dataset: str) -> str:
    root = CFG.warehouse.rstrip("/")
    return f"{root}/{dataset}" if "://" in root else f"file://{root}/{dataset}"


FEATURES = Asset(name="vasp_features", uri=_asset_uri("features"), group="vasp")
RECOMMENDATIONS = Asset(name="vasp_recommendations", uri=_asset_uri("recommendations"), group="vasp")

default_args = {
    "owner": "vasp",
    "retries": CFG.retries,
    "retry_delay": dt.timedelta(seconds=CFG.retry_delay_s),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(seconds=CFG.max_retry_delay_s),
    "execution_timeout": dt.timedelta(seconds=CFG.task_timeout_s),
    "on_failure_callback": NightlyAlert("task_failed"),  # alerting: off unless VASP_ALERT_* (pipeline.alerts)
}

with DAG(
    dag_id="vasp_nightly",
    schedule=CronDataIntervalTimetable(CFG.schedule, timezone=CFG.timezone),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["vasp", "recommendations", "nightly"],
    doc_md=__doc__,
    on_failure_callback=NightlyAlert("run_failed"),
    deadline=deadline_alert(ALERTS),  # VASP_ALERT_DEADLINE: a run not finished that long after it was queued
    render_template_as_native_obj=True,  # spark-submit receives the stage's argv as a list
    user_defined_macros={"spark_argv": tasks.spark_argv},  # Spark stage + plan -> spark-submit arguments
    params={
        "input": Param(
            CFG.input,
            type="string",
            description="'synthetic', an input path/URI ({date} = D) or events:DIR (an event log)",
        ),
        "preset": Param(CFG.preset, type="string", enum=sorted(PRESETS), description="training preset"),
        "top_n": Param(CFG.top_n, type="integer", minimum=1, description="items per user in the lists"),
        "threshold": Param(CFG.threshold, type="number", description="a rating above this is a positive"),
        "min_user_interactions": Param(
            CFG.min_user_interactions, type="integer", minimum=1, description="min positives to train on a user"
        ),
        "exclude": Param(
            CFG.exclude,
            type="string",
            enum=list(EXCLUDE_RULES),
            description="what a list leaves out: all = every item the user interacted with; positives; none",
        ),
        "tune": Param(
            CFG.tune,
            type="string",
            enum=list(TUNE_MODES),
            description="tune the training config on validation before training: off, weekly, nightly",
        ),
        "fit_budget": Param(
            CFG.fit_budget,
            type="string",
            description="wall clock for the training's joint fit (900s, 30m, 2h, 1h30m; empty: none): the best epoch "
            "within it serves",
        ),
        "date": Param(
            None,
            type=["null", "string"],
            description="override the date D (YYYY-MM-DD); default: the logical date",
        ),
    },
) as dag:

    @task(task_id="prepare_input")
    def prepare_input(**context) -> Plan:
        plan = make_plan(context["params"], context.get("logical_date"), context["dag_run"].run_after, config=CFG)
        return tasks.prepare_input(plan)

    plan = prepare_input()

    wait_for_input = PythonSensor(
        task_id="wait_for_input",
        python_callable=tasks.input_available,
        op_kwargs={"input_uri": "{{ " + PLAN + ".awaited_input }}"},
        timeout=CFG.input_timeout_s,
        poke_interval=CFG.input_poke_s,
        mode=CFG.sensor_mode,
        on_failure_callback=[tasks.on_input_missing, NightlyAlert("task_failed")],
    )

    if CFG.spark_mode == "submit":
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        def _spark(task_id: str, stage: str) -> SparkSubmitOperator:
            return SparkSubmitOperator(
                task_id=task_id,
                conn_id=CFG.spark_conn_id,
                application=STAGES[stage].application,
                application_args="{{ spark_argv('" + stage + "', " + PLAN + ") }}",
                name=f"vasp-{stage}-" + "{{ " + PLAN + ".date }}",
                py_files=CFG.spark_py_files or None,
            )

        build_features = _spark("build_features", "build")
        score_users = _spark("score_users", "score")
    else:

        @task(task_id="build_features")
        def build_local(plan: Plan) -> str:
            return tasks.build(plan)

        @task(task_id="score_users")
        def score_local(plan: Plan) -> str:
            return tasks.score(plan)

        build_features = build_local(plan)
        score_users = score_local(plan)

    gpu = {k: v for k, v in (("pool", CFG.gpu_pool), ("queue", CFG.gpu_queue)) if v}
    if CFG.train_pod_template:  # KubernetesExecutor: run training in a GPU pod (infra/k8s)
        gpu["executor_config"] = {"pod_template_file": CFG.train_pod_template}

    @task(task_id="tune_model", execution_timeout=dt.timedelta(seconds=CFG.train_timeout_s), **gpu)
    def tune_model(plan: Plan) -> str:
        return tasks.tune(plan)

    # none_failed: trains after a skipped tune_model (a night that does not tune) as after a finished one
    @task(
        task_id="train_model",
        execution_timeout=dt.timedelta(seconds=CFG.train_timeout_s),
        trigger_rule="none_failed",
        **gpu,
    )
    def train_model(plan: Plan) -> str:
        return tasks.train(plan)

    @task(task_id="promote_model")
    def promote_model(plan: Plan) -> dict:
        return tasks.promote(plan)

    @task(task_id="validate_recommendations", on_failure_callback=NightlyAlert("output_check_failed"))
    def validate_recommendations(plan: Plan) -> dict:
        return checks.validate(plan)

    @task(task_id="publish_assets", outlets=[FEATURES, RECOMMENDATIONS])
    def publish_assets(plan: Plan, decision: dict, counts: dict, **context) -> dict:
        summary = tasks.publish(plan, decision, counts)
        alerts.check_night(summary, plan.warehouse, run_id=context["run_id"])  # gate rejection streak, stale model
        events = context["outlet_events"]
        events[FEATURES].extra = {"date": plan.date, "uri": plan.features}
        events[RECOMMENDATIONS].extra = {"date": plan.date, "uri": plan.recommendations, **counts}
        return summary

    @task(task_id="morning_report")
    def morning_report(plan: Plan, summary: dict, **context) -> dict:
        made = tasks.report(plan)
        if made["flags"]:  # alerting: off unless VASP_ALERT_* (pipeline.alerts)
            run_record = alerts.run_record(plan.warehouse, plan.date)
            alerts.alert_flags(plan.date, made["flags"], run_record=run_record, run_id=context["run_id"])
        return made

    tuned = tune_model(plan)
    trained = train_model(plan)
    decision = promote_model(plan)
    validated = validate_recommendations(plan)
    published = publish_assets(plan, decision, validated)
    reported = morning_report(plan, published)

    chain(plan, wait_for_input, build_features, tuned, trained, decision, score_users, validated, published, reported)
