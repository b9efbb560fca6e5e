"""The nightly pipeline's task callables and its configuration.

``dags/vasp_nightly.py`` only wires these together; every callable is a thin wrapper
around a stage's own entry point (the function its ``vasp SUBCOMMAND`` calls), so the
DAG and the CLI run the same code. Each works on one logical date ``D`` and passes only
paths/URIs (a JSON-able "plan" dict) between tasks.

This module is imported when the DAG file is parsed: it imports nothing heavy at module
level (no airflow, pyspark, tensorflow, keras, mlflow, pyarrow); stages are imported
inside the callables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vasp_model.core import defaults
from vasp_model.core.settings import build_config
from vasp_model.data import layout

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
SPARK_MODES = ("local", "submit")
SENSOR_MODES = ("poke", "reschedule")
# Run-level knobs that a DAG run may override (Airflow Params / ``vasp run`` flags).
RUN_PARAMS = ("input", "preset", "top_n", "threshold", "min_user_interactions")


@dataclass(frozen=True)
class NightlyConfig:
    """Deployment settings of the nightly DAG: defaults, then ``VASP_<FIELD>`` env vars.

    ``input`` is ``synthetic`` (generate a synthetic file for the date) or a path/URI;
    ``{date}`` in it is replaced by the logical date (``/data/events/dt={date}/``).
    """

    warehouse: str = dataclasses.field(default_factory=defaults.default_warehouse)
    tracking_uri: str = dataclasses.field(default_factory=defaults.default_tracking_uri)
    input: str = SYNTHETIC
    preset: str = "cpu"
    top_n: int = 100
    threshold: float = 3.5
    min_user_interactions: int = 5
    synthetic_users: int = 3000  # size of the synthetic input (input=synthetic)
    synthetic_items: int = 1500
    schedule: str = "0 2 * * *"  # cron; each run covers the day before its run time
    timezone: str = "UTC"
    spark_mode: str = "local"  # local: in-process Spark; submit: SparkSubmitOperator
    spark_conn_id: str = "spark"
    spark_py_files: str = ""  # submit mode: the package zip shipped to executors (infra/spark/submit.py builds it)
    train_pod_template: str = ""  # KubernetesExecutor: pod template file of the GPU training task
    gpu_pool: str | None = None  # Airflow pool of the training task (None = default pool)
    gpu_queue: str | None = None  # executor queue of the training task (None = default queue)
    retries: int = 2
    retry_delay_s: int = 60
    max_retry_delay_s: int = 1800
    input_timeout_s: int = 6 * 3600
    input_poke_s: int = 300
    sensor_mode: str = "reschedule"
    task_timeout_s: int = 3600
    train_timeout_s: int = 4 * 3600

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo

        from vasp_model.core.config import PRESETS

        if not self.warehouse:
            raise ValueError("warehouse must not be empty")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.spark_mode not in SPARK_MODES:
            raise ValueError(f"spark_mode must be one of {SPARK_MODES}, got {self.spark_mode!r}")
        if self.sensor_mode not in SENSOR_MODES:
            raise ValueError(f"sensor_mode must be one of {SENSOR_MODES}, got {self.sensor_mode!r}")
        if len(self.schedule.split()) != 5:
            raise ValueError(f"schedule must be a 5-field cron expression, got {self.schedule!r}")
        try:
            ZoneInfo(self.timezone)
        except Exception as exc:  # ZoneInfoNotFoundError, ValueError
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA time zone") from exc
        for name in (
            "top_n",
            "min_user_interactions",
            "synthetic_users",
            "synthetic_items",
            "retry_delay_s",
            "max_retry_delay_s",
            "input_poke_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "input_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.task_timeout_s <= 0 or self.train_timeout_s <= 0:
            raise ValueError("task_timeout_s and train_timeout_s must be > 0")


def load_config(overrides: Mapping[str, Any] | None = None) -> NightlyConfig:
    return build_config(NightlyConfig, overrides)


# ---------------------------------------------------------------------------------------------
# Planning: which date, which input, where every output goes


def partition_date(logical_date: dt.datetime | None, run_after: dt.datetime | None, timezone: str) -> str:
    """The date ``D`` a run owns.

    A scheduled run's logical date is the start of the day it covers, so ``D`` is the
    logical date in the DAG's time zone. A run triggered without a logical date
    (``airflow dags trigger`` without ``--logical-date``) covers the day before it runs,
    like the scheduled run at that time would.
    """
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(timezone)
    if logical_date is not None:
        return _as_aware(logical_date).astimezone(tz).date().isoformat()
    if run_after is None:
        raise ValueError("the run has neither a logical date nor a run_after time; trigger it with --logical-date")
    day = _as_aware(run_after).astimezone(tz).date() - dt.timedelta(days=1)
    log.warning("run has no logical date (triggered without --logical-date): processing the previous day %s", day)
    return day.isoformat()


def _as_aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def synthetic_input(warehouse: str, date: str) -> str:
    """Where the synthetic input file of ``date`` lives."""
    return f"{layout.dataset_dir(warehouse, 'synthetic', date)}/interactions.csv"


def make_plan(
    run_params: Mapping[str, Any],
    logical_date: dt.datetime | None,
    run_after: dt.datetime | None = None,
    config: NightlyConfig | None = None,
) -> dict[str, Any]:
    """Resolve the date, the input and every output location of one run (no I/O)."""
    config = config or load_config()
    values = {name: getattr(config, name) for name in RUN_PARAMS}
    values.update({k: v for k, v in run_params.items() if k in RUN_PARAMS and v not in (None, "")})
    date = layout.check_date(str(run_params["date"])) if run_params.get("date") else None
    date = date or partition_date(logical_date, run_after, config.timezone)
    warehouse = config.warehouse
    synthetic = str(values["input"]) == SYNTHETIC
    input_uri = synthetic_input(warehouse, date) if synthetic else str(values["input"]).replace("{date}", date)
    plan = {
        "date": date,
        "input": input_uri,
        "synthetic": synthetic,
        "warehouse": warehouse,
        "tracking_uri": config.tracking_uri,
        "preset": str(values["preset"]),
        "top_n": int(values["top_n"]),
        "threshold": float(values["threshold"]),
        "min_user_interactions": int(values["min_user_interactions"]),
        "synthetic_users": config.synthetic_users,
        "synthetic_items": config.synthetic_items,
        "features": layout.features_dir(warehouse, date),
        "models": layout.models_dir(warehouse, date),
        "recommendations": layout.recommendations_dir(warehouse, date),
        "runs": layout.dataset_dir(warehouse, "runs", date),
    }
    plan["argv"] = {stage: stage_argv(stage, plan) for stage in STAGES}
    return plan


# ---------------------------------------------------------------------------------------------
# Stages: module of the ``vasp`` subcommand + the arguments the nightly run passes it

STAGES: dict[str, str] = {
    "synth": "jobs.synth",
    "build": "jobs.build_matrices",
    "train": "vasp_model.cli.train",
    "score": "jobs.score",
}
SPARK_STAGES = ("build", "score")


def stage_argv(stage: str, plan: Mapping[str, Any]) -> list[str]:
    """The command-line arguments of ``vasp <stage>`` for this run (also used for spark-submit)."""
    date, warehouse = str(plan["date"]), str(plan["warehouse"])
    if stage == "synth":
        return ["--out", str(plan["input"]), "--users", str(plan["synthetic_users"]), "--items", str(plan["synthetic_items"])]  # fmt: skip
    if stage == "build":
        return [
            "--input", str(plan["input"]),
            "--date", date,
            "--warehouse", warehouse,
            "--threshold", str(plan["threshold"]),
            "--min-user-interactions", str(plan["min_user_interactions"]),
        ]  # fmt: skip
    if stage == "train":
        return [
            "--date", date,
            "--warehouse", warehouse,
            "--preset", str(plan["preset"]),
            "--tracking-uri", str(plan["tracking_uri"]),
            "--quiet",
        ]  # fmt: skip
    if stage == "score":
        return [
            "--date", date,
            "--warehouse", warehouse,
            "--tracking-uri", str(plan["tracking_uri"]),
            "--top-n", str(plan["top_n"]),
        ]  # fmt: skip
    raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")


def stage_script(stage: str) -> str:
    """Path of a Spark stage's script (the ``application`` of spark-submit)."""
    import importlib.util

    spec = importlib.util.find_spec(STAGES[stage])
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot find the module of stage {stage!r} ({STAGES[stage]})")
    return spec.origin


def run_stage(stage: str, argv: Sequence[str]) -> Any:
    """Run ``vasp <stage> ARGV`` in this process, exactly as the CLI does; raise on failure."""
    if stage in SPARK_STAGES:
        # In-process Spark: its Python workers must be this interpreter (the one with the
        # package and pyarrow), not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    module = importlib.import_module(STAGES[stage])
    parser = argparse.ArgumentParser(prog=f"vasp {stage}")
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    log.info("running vasp %s %s", stage, " ".join(argv))
    code = module.run(args)
    if code not in (None, 0):
        raise RuntimeError(f"vasp {stage} exited with status {code}")
    return args


# ---------------------------------------------------------------------------------------------
# Task callables


def prepare_input(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Generate the date's synthetic input (deterministic, so re-runs rewrite the same file)."""
    if plan["synthetic"]:
        run_stage("synth", plan["argv"]["synth"])
    else:
        log.info("input for %s is %s; nothing to generate", plan["date"], plan["input"])
    return dict(plan)


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


def missing_input_message(plan: Mapping[str, Any], timeout_s: int) -> str:
    return (
        f"input for {plan['date']} never arrived: {plan['input']} did not exist within {timeout_s} s of waiting. "
        "Nothing was built, trained, promoted or published for this date; the champion is unchanged."
    )


def build(plan: Mapping[str, Any]) -> str:
    """``vasp build``: publish ``features/dt=D``; returns its URI."""
    run_stage("build", plan["argv"]["build"])
    _require_published(plan["features"], "build")
    return str(plan["features"])


def train(plan: Mapping[str, Any]) -> str:
    """``vasp train``: train + evaluate + log to MLflow, publish ``models/dt=D``; returns its URI."""
    run_stage("train", plan["argv"]["train"])
    _require_published(plan["models"], "train")
    return str(plan["models"])


def promote(plan: Mapping[str, Any]) -> dict[str, Any]:
    """``vasp promote``: the registry gate. A rejected candidate is a decision, not a failure,
    unless there is no champion at all (first night): then nothing can be scored and the task fails.

    Calls ``registry.promote`` (what ``vasp promote`` calls) directly, to get the decision
    back as data; returns it as a dict (XCom, run record).
    """
    from vasp_model.mlops import registry
    from vasp_model.mlops.tracking import TrackingConfig

    cfg = build_config(TrackingConfig, {"tracking_uri": plan["tracking_uri"]})
    decision = registry.promote(
        str(plan["date"]),
        str(plan["warehouse"]),
        cfg.tracking_uri,
        cfg.registered_model,
        margin=cfg.gate_margin,
        metric=cfg.gate_metric,
    )
    log.info("promotion decision for %s: %s", plan["date"], decision.to_json())
    if decision.champion_after is None:
        from airflow.sdk.exceptions import AirflowFailException  # no retry: the decision is recorded

        raise AirflowFailException(
            f"no champion to score {plan['date']} with: the first candidate v{decision.candidate_version} "
            f"was rejected ({decision.reason}); the night publishes no recommendations"
        )
    return dataclasses.asdict(decision)


def score(plan: Mapping[str, Any]) -> str:
    """``vasp score``: publish ``recommendations/dt=D`` from the champion; returns its URI."""
    run_stage("score", plan["argv"]["score"])
    _require_published(plan["recommendations"], "score")
    return str(plan["recommendations"])


def _require_published(uri: str, stage: str) -> None:
    from vasp_model.data import storage

    if not storage.is_published(uri):
        raise RuntimeError(f"vasp {stage} finished but {uri} is not published (no _SUCCESS)")


def on_input_missing(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the input sensor: say plainly what happened."""
    task = context.get("task")
    plan = context["ti"].xcom_pull(task_ids="prepare_input") or {}
    timeout = int(getattr(task, "timeout", 0) or 0)
    log.error(missing_input_message({"date": plan.get("date", "?"), "input": plan.get("input", "?")}, timeout))


def validate(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Check the published lists of ``D``; raise ``ValueError`` naming every violated rule."""
    from vasp_model.data import storage

    recs = read_table(str(plan["recommendations"]))
    users = read_table(f"{plan['features']}/users", columns=["user_idx", "user_id"])
    seen = read_table(f"{plan['features']}/interactions", columns=["user_idx", "item_id"])
    manifest = storage.read_json(f"{plan['recommendations']}/{storage.MANIFEST}")
    vocabulary = model_vocabulary(str(plan["tracking_uri"]), manifest["model_resolved_uri"])
    return check_recommendations(recs, users, seen, int(plan["top_n"]), manifest, vocabulary)


def model_vocabulary(tracking_uri: str, model_uri: str) -> set[str]:
    """The item ids a registered model can recommend (its bundle's items table; keras is not loaded)."""
    import tempfile

    import pyarrow.parquet as pq

    from vasp_model.mlops.registry import download_bundle
    from vasp_model.recommenders.bundle import ITEMS_FILE

    with tempfile.TemporaryDirectory(prefix="vasp-validate-") as tmp:
        bundle_dir, _, _ = download_bundle(tracking_uri, model_uri, tmp)
        items = pq.read_table(os.path.join(bundle_dir, ITEMS_FILE), columns=["item_id"])
    return {str(i) for i in items.column("item_id").to_pylist()}


def check_recommendations(
    recs, users, seen, top_n: int, manifest: Mapping[str, Any], vocabulary: set[str]
) -> dict[str, Any]:
    """The rules a night's lists satisfy (pandas DataFrames in; counts out, ``ValueError`` otherwise).

    Every user of the features has a list and nobody else does; each list has ranks 1..n, no
    repeated item, only items of the model's vocabulary, none the user has seen, and exactly
    ``min(top_n, |vocabulary| - |seen ∩ vocabulary|)`` items; the counts match the manifest.
    """
    problems: list[str] = []
    recs = recs.assign(user_id=recs["user_id"].astype(str), item_id=recs["item_id"].astype(str))
    users = users.assign(user_id=users["user_id"].astype(str))
    rec_users, all_users = set(recs["user_id"]), set(users["user_id"])
    if missing := all_users - rec_users:
        problems.append(f"{len(missing)} user(s) have no list, e.g. {sorted(missing)[:5]}")
    if extra := rec_users - all_users:
        problems.append(f"{len(extra)} unknown user(s) have a list, e.g. {sorted(extra)[:5]}")
    grouped = recs.groupby("user_id")
    per_user = grouped.agg(
        n=("item_id", "size"), distinct=("item_id", "nunique"), lo=("rank", "min"), hi=("rank", "max")
    )
    if (per_user["distinct"] != per_user["n"]).any():
        problems.append(f"{int((per_user['distinct'] != per_user['n']).sum())} list(s) repeat an item")
    if ((per_user["lo"] != 1) | (per_user["hi"] != per_user["n"])).any():
        problems.append("ranks are not 1..n in some lists")
    if unknown := set(recs["item_id"]) - vocabulary:
        problems.append(f"{len(unknown)} recommended item(s) are not in the model's vocabulary")
    seen_ids = seen.merge(users, on="user_idx")[["user_id", "item_id"]].astype(str).drop_duplicates()
    hits = recs[["user_id", "item_id"]].merge(seen_ids, on=["user_id", "item_id"])
    if len(hits):
        problems.append(f"{len(hits)} recommended item(s) were already seen, e.g. {hits.head(3).values.tolist()}")
    known_seen = seen_ids[seen_ids["item_id"].isin(vocabulary)].groupby("user_id").size()
    expected = (len(vocabulary) - known_seen.reindex(per_user.index, fill_value=0)).clip(upper=top_n)
    if (wrong := per_user.index[per_user["n"] != expected]).size:
        example = {u: (int(per_user.at[u, "n"]), int(expected[u])) for u in wrong[:3]}
        problems.append(
            f"{wrong.size} list(s) do not have min({top_n}, unseen items) items; (got, expected): {example}"
        )
    counts = manifest.get("counts", {})
    for key, actual in {"rows": len(recs), "users": len(rec_users), "users_input": len(all_users)}.items():
        if int(counts.get(key, -1)) != actual:
            problems.append(f"manifest counts {key}={counts.get(key)} but the data has {actual}")
    if int(manifest.get("top_n", top_n)) != top_n:
        problems.append(f"lists were scored with top_n={manifest.get('top_n')}, expected {top_n}")
    if problems:
        raise ValueError("published recommendations are invalid: " + "; ".join(problems))
    return {
        "users": len(rec_users),
        "rows": len(recs),
        "top_n": top_n,
        "short_lists": int((per_user["n"] < top_n).sum()),
        "model_version": str(manifest.get("model_version")),
    }


def read_table(uri: str, columns: list[str] | None = None):
    """Read a Parquet directory (Spark's or pyarrow's) into pandas, skipping _SUCCESS/manifest files."""
    import pyarrow.dataset as pads

    from vasp_model.data import storage

    filesystem, path = storage.resolve(uri)
    dataset = pads.dataset(
        path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_", storage.MANIFEST.split(".")[0]]
    )
    return dataset.to_table(columns=columns).to_pandas()


def publish(plan: Mapping[str, Any], decision: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run record ``runs/dt=D/run.json`` (atomically; replaces only this date's record)."""
    from vasp_model.data import storage

    summary = {
        "date": plan["date"],
        "input": plan["input"],
        "features": plan["features"],
        "models": plan["models"],
        "recommendations": plan["recommendations"],
        "tracking_uri": plan["tracking_uri"],
        "promotion": dict(decision),
        "checks": dict(checks),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    staging = storage.staging_dir(str(plan["runs"]))
    storage.write_json(f"{staging}/run.json", summary)
    storage.publish(staging, str(plan["runs"]))
    return summary
