"""``vasp run``: run the nightly Airflow DAG end to end for one logical date, on this machine.

The embedded default needs nothing but this package and Java: Airflow's metadata DB is a
SQLite file under the run directory (``$VASP_HOME``, default ``./run``; migrated on first
use), MLflow is SQLite + local artifacts, Spark runs ``local[*]`` in-process, the warehouse
is a local directory, and the input is a synthetic file unless ``--input`` is given. The
DAG is parsed from Airflow's DAG folder (``$AIRFLOW__CORE__DAGS_FOLDER``, default ``./dags``:
run it from the repository root) and runs through ``dag.test()`` (the same task code the
scheduler runs), then the command prints where the outputs are, the promotion decision and
one user's top 10. Running the same date again replaces exactly that date's outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from typing import Any

from vasp_model.core.args import add_exclude_argument, add_warehouse_argument

DAG_ID = "vasp_nightly"
# Framework loggers whose INFO lines are bookkeeping (the metadata DB migration, DAG parsing, the
# task API's state updates): at WARNING in an interactive run (VASP_LOG_LEVEL=DEBUG keeps them).
QUIET_LOGGERS = (
    "alembic",
    "airflow.utils.db",
    "airflow.dag_processing",
    "airflow.serialization",
    "airflow.models",
    "airflow.api_fastapi",
    "py4j",  # the Spark gateway's connection bookkeeping
)
# Deprecation notices raised inside the installed frameworks, not by this package's code.
FRAMEWORK_WARNINGS = ("Using `httpx` with `starlette.testclient`", "The `airflow.utils.operator_helpers")
HELP = "Run the nightly Airflow DAG end to end for one logical date."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", default=None, help="Logical date YYYY-MM-DD to process (default: yesterday, UTC).")
    parser.add_argument(
        "--input",
        default=None,
        help="Interactions file/directory (CSV, Parquet, MovieLens), e.g. ../shared/data/ml-1m/ratings.csv "
        "(default: a synthetic file generated for the date).",
    )
    parser.add_argument("--preset", default=None, help="Training preset: cpu (default), tiny, paper.")
    parser.add_argument("--top-n", type=int, default=None, help="Items per user in the published lists (default 100).")
    parser.add_argument(
        "--threshold", type=float, default=None, help="A rating above this is a positive (default 3.5)."
    )
    parser.add_argument(
        "--min-user-interactions",
        type=int,
        default=None,
        help="Users with fewer positives are not trained on, but still scored (default 5).",
    )
    parser.add_argument(
        "--fit-budget",
        default=None,
        help="Wall clock for the training's joint fit (900s, 30m, 2h, 1h30m): it stops at the epoch end after "
        "which one more would pass it, serving the best epoch so far (default: $VASP_FIT_BUDGET, else none).",
    )
    add_exclude_argument(parser)
    add_warehouse_argument(parser)
    parser.add_argument(
        "--home", default=None, help="Run directory for Airflow, MLflow and Spark state (default: $VASP_HOME or ./run)."
    )
    parser.add_argument("--user", default=None, help="Whose top 10 to print afterwards (default: the first user).")


def embedded_environment(home: str | None = None, warehouse: str | None = None) -> dict[str, str]:
    """Environment of the embedded deployment; explicit settings in ``os.environ`` win (except Airflow's home)."""
    from vasp_model.core import defaults

    env: dict[str, str] = {}
    if home:
        env["VASP_HOME"] = os.path.abspath(home)
    if warehouse:
        env["VASP_WAREHOUSE"] = warehouse if "://" in warehouse else os.path.abspath(warehouse)
    run = env.get("VASP_HOME") or defaults.run_dir()
    airflow_home = os.path.join(run, "airflow")
    env.update(
        {
            "VASP_HOME": run,
            "AIRFLOW_HOME": airflow_home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
        }
    )
    # Defaults only: flags, then an operator's explicit settings win.
    for key, value in {
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.abspath("dags"),
        "VASP_WAREHOUSE": defaults.default_warehouse(),
        "VASP_SPARK_MODE": "local",
        "VASP_SPARK_MASTER": "local[*]",
        # An interactive run fails fast: no retry back-off, no hours-long wait for a missing input.
        "VASP_RETRIES": "0",
        "VASP_INPUT_TIMEOUT_S": "0",
        "VASP_INPUT_POKE_S": "5",
        "VASP_SENSOR_MODE": "poke",
        "SPARK_LOCAL_IP": "127.0.0.1",
        **defaults.TENSORFLOW_ENV,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per download, in a log
    }.items():
        env.setdefault(key, os.environ.get(key, value))
    if os.environ.get("VASP_LOG_LEVEL", "").upper() != "DEBUG":
        for key, value in {  # stdlib loggers through the logging config, structlog ones by namespace
            "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "vasp_model.cli.airflow_logging.LOGGING_CONFIG",
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": " ".join(f"{name}=warning" for name in QUIET_LOGGERS),
        }.items():
            env.setdefault(key, os.environ.get(key, value))
    return env


def ignore_framework_warnings() -> None:
    """Keep the frameworks' own deprecation notices off the console."""
    import warnings

    for message in FRAMEWORK_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))


def ensure_metadata_db() -> None:
    """Create or migrate Airflow's metadata DB (idempotent)."""
    from airflow.utils import db

    db.initdb()


def load_dag():
    """The DAG as the dag-processor parses it from Airflow's DAG folder."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=settings.DAGS_FOLDER)
    if bag.import_errors:
        raise RuntimeError(f"the DAG folder has import errors: {bag.import_errors}")
    if DAG_ID not in bag.dags:
        raise FileNotFoundError(
            f"no DAG {DAG_ID!r} in the DAG folder {settings.DAGS_FOLDER} "
            "(run from the repository root, or set AIRFLOW__CORE__DAGS_FOLDER to its dags/)"
        )
    return bag.dags[DAG_ID]


def logical_date_of(date: str) -> dt.datetime:
    """Midnight of ``date`` in the DAG's time zone (so the run owns exactly ``date``)."""
    from zoneinfo import ZoneInfo

    from vasp_model.data import layout
    from vasp_model.pipeline.plan import load_config

    day = dt.date.fromisoformat(layout.check_date(date))
    return dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo(load_config().timezone))


def run_dag(date: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the DAG for ``date`` with ``dag.test()``; returns the run's state and per-task states/durations.

    Airflow must already be configured (``AIRFLOW_HOME`` etc. set before airflow was first imported).
    """
    ignore_framework_warnings()
    ensure_metadata_db()
    dag = load_dag()
    started = time.monotonic()
    dag_run = dag.test(logical_date=logical_date_of(date), run_conf=dict(conf or {}))
    wall = time.monotonic() - started
    tasks = {}
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date or far, ti.task_id)):
        seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        tasks[ti.task_id] = {"state": str(ti.state), "seconds": seconds}
    return {"date": date, "state": str(dag_run.state), "run_id": dag_run.run_id, "seconds": wall, "tasks": tasks}


def run(args: argparse.Namespace) -> int:
    from vasp_model.data import layout

    date = (
        layout.check_date(args.date)
        if args.date
        else (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    )
    if args.input and "://" not in args.input and not os.path.exists(args.input):
        raise FileNotFoundError(f"--input {args.input} does not exist")
    env = embedded_environment(args.home, args.warehouse)
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != env["AIRFLOW_HOME"]:
        raise RuntimeError(
            "airflow was imported before `vasp run` could configure it; run `vasp run` in a fresh process"
        )
    os.environ.update(env)
    os.makedirs(env["AIRFLOW_HOME"], exist_ok=True)
    conf = {
        "input": os.path.abspath(args.input) if args.input and "://" not in args.input else args.input,
        "preset": args.preset,
        "top_n": args.top_n,
        "threshold": args.threshold,
        "min_user_interactions": args.min_user_interactions,
        "exclude": args.exclude,
        "fit_budget": args.fit_budget,
    }
    result = run_dag(date, {k: v for k, v in conf.items() if v is not None})
    return report(result, os.environ["VASP_WAREHOUSE"], args.user, conf["input"])


def report(result: dict[str, Any], warehouse: str, user: str | None = None, input_uri: str | None = None) -> int:
    """Print the outcome of a run; 0 if it succeeded, 1 if any task failed."""
    from vasp_model.data import layout, storage
    from vasp_model.pipeline.tasks import missing_input_message

    date = result["date"]
    print(f"\nvasp_nightly {date}: {result['state']} in {result['seconds']:.0f} s")
    for task_id, info in result["tasks"].items():
        seconds = "" if info["seconds"] is None else f"{info['seconds']:7.1f} s"
        print(f"  {task_id:<26} {info['state']:<16} {seconds}")
    if result["state"] != "success":
        failed = [t for t, info in result["tasks"].items() if info["state"] == "failed"]
        skipped = [t for t, info in result["tasks"].items() if info["state"] == "upstream_failed"]
        if "wait_for_input" in failed:
            message = missing_input_message(date, input_uri or "the input", 0)
            print("error: " + message, file=sys.stderr)
        print(f"error: the nightly run for {date} failed in {', '.join(failed) or '?'} (not run: "
              f"{', '.join(skipped) or 'none'}); the task's error is in the log above", file=sys.stderr)  # fmt: skip
        return 1
    record = storage.read_json(f"{layout.dataset_dir(warehouse, 'runs', date)}/run.json")
    decision = record["promotion"]
    print(f"\nfeatures:        {record['features']}")
    print(f"model:           {record['models']}")
    print(f"recommendations: {record['recommendations']}  ({record['checks']['users']} users)")
    print(f"MLflow:          {record['tracking_uri']}")
    print(f"run record:      {layout.dataset_dir(warehouse, 'runs', date)}/run.json")
    print(f"promotion:       {decision['action']} (candidate v{decision['candidate_version']}, "
          f"champion {'v' + decision['champion_after'] if decision['champion_after'] else 'none'}): "
          f"{decision['reason']}")  # fmt: skip
    if serving := record.get("serving"):
        name = f" {serving['registered_model']} v{serving['version']}" if serving.get("registered_model") else ""
        print(f"serving:         {serving['kind']}{name}")
    if "flags" in record:
        rules = ", ".join(f["rule"] for f in record["flags"]) or "none"
        print(f"morning report:  {layout.dataset_dir(warehouse, 'runs', date)}/report.html (drift flags: {rules})")
    _print_top(warehouse, date, user)
    return 0


def _print_top(warehouse: str, date: str, user: str | None) -> None:
    """``vasp recommend --user U --date D`` for one user (the first user id by default)."""
    from vasp_model.cli.recommend import show
    from vasp_model.data import layout
    from vasp_model.pipeline.checks import read_table

    if user is None:
        recs = read_table(layout.recommendations_dir(warehouse, date), columns=["user_id"])
        user = str(min(recs["user_id"].unique(), key=lambda u: (len(u), u)))
    print()
    show(warehouse, user, date)
