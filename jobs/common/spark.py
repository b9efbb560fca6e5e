"""The one place a SparkSession is built, plus Spark helpers shared by the jobs.

A job builds a frozen :class:`SparkConfig` (defaults, then ``VASP_SPARK_*`` environment
variables, then CLI flags from :func:`add_spark_arguments`) and calls :func:`get_session`.
The same code runs on ``local[*]`` (the embedded default) and on a cluster: only the
master URL (``spark://``, ``yarn``, ``k8s://``) and the URIs change.

Writing a date's output goes through :func:`write_tables`: every table is written as
Parquet into a staging directory, then ``vasp_model.data.storage.publish`` swaps the whole
directory in atomically (manifest + ``_SUCCESS``), so readers never see half a date.

pyspark is imported lazily inside functions: importing this module is cheap and has no
side effects.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pyarrow import fs as pafs

from vasp_model.core import defaults
from vasp_model.core.errors import CLEAR_ERRORS
from vasp_model.core.settings import build_config
from vasp_model.data import storage

DEFAULT_MASTER = "local[*]"

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from vasp_jobs.common.progress import SparkProgress

_MASTER_PREFIXES = ("local", "spark://", "yarn", "k8s://", "mesos://")
# Properties the jobs run well with, applied only where the cluster's own configuration
# (spark-defaults.conf, spark-submit --conf) does not set them: a cluster that wants its UI or a
# different codec keeps them. VASP_SPARK_CONF (``spark_conf``) overrides both.
DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.autoBroadcastJoinThreshold": str(64 * 1024 * 1024),
    "spark.sql.parquet.compression.codec": "snappy",
    # collect_list per user: keep the hash aggregation in memory instead of falling back to
    # sorting after 128 groups (per task, users / shuffle partitions groups are live).
    "spark.sql.objectHashAggregate.sortBased.fallbackThreshold": "1000000",
    # Do not write _SUCCESS marker files inside each table (publish writes one per date).
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    # Local files without Hadoop's .crc checksum files beside them: table directories hold data only.
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
}
_LOG_LEVELS = ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")


@dataclasses.dataclass(frozen=True)
class SparkConfig:
    """How to build the SparkSession. Env: ``VASP_SPARK_MASTER``, ``VASP_SPARK_DRIVER_MEMORY``, ..."""

    spark_master: str = DEFAULT_MASTER
    spark_app_name: str = "vasp"
    # spark.sql.warehouse.dir (managed SQL tables; the jobs write to the VASP warehouse by URI).
    # Empty = <run dir>/spark-warehouse, so nothing litters the working directory.
    spark_sql_warehouse: str = ""
    # Checkpoint dir for long lineages; empty = <run dir>/spark-checkpoints.
    spark_checkpoint_dir: str = ""
    spark_driver_memory: str = "4g"
    spark_executor_memory: str = ""
    # spark.sql.shuffle.partitions; 0 = 8 for local masters, 200 (Spark's default) on a cluster.
    spark_shuffle_partitions: int = 0
    spark_log_level: str = "ERROR"
    # Extra Spark settings as KEY=VALUE strings (env: comma-separated).
    spark_conf: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.spark_master.startswith(_MASTER_PREFIXES):
            raise ValueError(
                f"spark_master must be local[*], spark://, yarn, k8s:// or mesos://, got {self.spark_master!r}"
            )
        if not self.spark_app_name:
            raise ValueError("spark_app_name must not be empty")
        if self.spark_shuffle_partitions < 0:
            raise ValueError(f"spark_shuffle_partitions must be >= 0, got {self.spark_shuffle_partitions}")
        if self.spark_log_level.upper() not in _LOG_LEVELS:
            raise ValueError(f"spark_log_level must be one of {_LOG_LEVELS}, got {self.spark_log_level!r}")
        for item in self.spark_conf:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ValueError(f"spark_conf entries must be KEY=VALUE, got {item!r}")

    @property
    def is_local(self) -> bool:
        return self.spark_master.startswith("local")

    def settings(self, cluster: Collection[str] = ()) -> dict[str, str]:
        """The Spark properties this config sets: :data:`DEFAULTS` but those the ``cluster``'s own
        configuration sets (property names), then the config's own settings and ``spark_conf``."""
        run = defaults.run_dir()
        shuffle = self.spark_shuffle_partitions or (8 if self.is_local else 200)
        conf = {key: value for key, value in DEFAULTS.items() if key not in cluster}
        conf |= {
            "spark.sql.warehouse.dir": self.spark_sql_warehouse or os.path.join(run, "spark-warehouse"),
            "spark.sql.shuffle.partitions": str(shuffle),
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.memory": self.spark_driver_memory,
        }
        if self.spark_executor_memory:
            conf["spark.executor.memory"] = self.spark_executor_memory
        for item in self.spark_conf:
            key, value = item.split("=", 1)
            conf[key.strip()] = value.strip()
        return conf

    def checkpoint_dir(self) -> str:
        return self.spark_checkpoint_dir or os.path.join(defaults.run_dir(), "spark-checkpoints")


def spark_config(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> SparkConfig:
    """Build a :class:`SparkConfig`: defaults, then ``VASP_SPARK_*`` env vars, then ``overrides``."""
    return build_config(SparkConfig, overrides, env)


def get_session(config: SparkConfig | None = None) -> SparkSession:
    """Build (or reuse) the SparkSession described by ``config``.

    For local masters ``SPARK_LOCAL_IP`` is pinned to loopback (no network exposure, no
    hostname lookups). If a session is already active (tests, spark-submit) it is reused;
    settings that can only be set at JVM start are then ignored. :data:`DEFAULTS` apply where the
    cluster's own configuration, as the JVM loaded it, does not set them.
    """
    config = config or spark_config()
    if config.is_local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers must run this interpreter (its venv has pyarrow, numpy, keras), not `python3`.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    cluster = cluster_properties(config)
    builder = SparkSession.builder.appName(config.spark_app_name)
    # Under spark-submit (the driver gets PYSPARK_GATEWAY_PORT) the submitter already chose the
    # master: only an explicitly configured master overrides it.
    if "PYSPARK_GATEWAY_PORT" not in os.environ or config.spark_master != DEFAULT_MASTER:
        builder = builder.master(config.spark_master)
    for key, value in config.settings(cluster).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(config.spark_log_level.upper())
    drop_heartbeat_race_trace(spark)
    checkpoint = config.checkpoint_dir()
    if "://" not in checkpoint:
        checkpoint = os.path.abspath(checkpoint)
    spark.sparkContext.setCheckpointDir(checkpoint)
    return spark


def cluster_properties(config: SparkConfig) -> set[str]:
    """The names of the Spark properties the cluster's own configuration sets: spark-defaults.conf
    and spark-submit's ``--conf``, as the JVM loaded them.

    Starts the JVM (or joins spark-submit's) with ``config``'s own settings, as ``getOrCreate``
    would. The console progress bar that spark-submit turns on for the shell it starts here is the
    shell's default, not the cluster's choice.
    """
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized(conf=SparkConf().setAll(config.settings(cluster=DEFAULTS).items()))
    names = {key for key, _ in SparkConf().getAll()}
    shell = "PYSPARK_GATEWAY_PORT" not in os.environ  # pyspark started the JVM as spark-submit's pyspark-shell
    return names - {"spark.ui.showConsoleProgress"} if shell else names


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Spark flags shared by every Spark job (``vasp build``, ``vasp score``)."""
    group = parser.add_argument_group("Spark")
    group.add_argument(
        "--master",
        default=None,
        help="Spark master URL: local[*] (default), local[N], spark://HOST:7077, yarn, k8s://URL "
        "(env VASP_SPARK_MASTER).",
    )
    group.add_argument(
        "--driver-memory", default=None, help="Spark driver memory, e.g. 4g (env VASP_SPARK_DRIVER_MEMORY)."
    )
    group.add_argument(
        "--executor-memory", default=None, help="Spark executor memory on a cluster (env VASP_SPARK_EXECUTOR_MEMORY)."
    )
    group.add_argument(
        "--shuffle-partitions",
        type=int,
        default=None,
        help="spark.sql.shuffle.partitions; 0 = 8 on local masters, 200 on a cluster (env VASP_SPARK_SHUFFLE_PARTITIONS).",
    )
    group.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Spark checkpoint directory (default <run dir>/spark-checkpoints; env VASP_SPARK_CHECKPOINT_DIR).",
    )
    group.add_argument(
        "--spark-conf",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="Extra Spark property; repeat for several (env VASP_SPARK_CONF, comma-separated).",
    )


def job_spark_config(app_name: str, overrides: Mapping[str, Any] | None = None) -> SparkConfig:
    """A job's :class:`SparkConfig`: :func:`spark_config` named ``app_name`` unless ``VASP_SPARK_APP_NAME`` is set."""
    values = dict(overrides or {})
    if "VASP_SPARK_APP_NAME" not in os.environ:
        values["spark_app_name"] = app_name
    return spark_config(values)


def spark_config_from_args(args: argparse.Namespace, app_name: str) -> SparkConfig:
    """The :class:`SparkConfig` for a job from its parsed CLI flags (see :func:`add_spark_arguments`)."""
    return job_spark_config(
        app_name,
        {
            "spark_master": args.master,
            "spark_driver_memory": args.driver_memory,
            "spark_executor_memory": args.executor_memory,
            "spark_shuffle_partitions": args.shuffle_partitions,
            "spark_checkpoint_dir": args.checkpoint_dir,
            "spark_conf": tuple(args.spark_conf) if args.spark_conf else None,
        },
    )


def spark_argv(config: SparkConfig) -> list[str]:
    """The :func:`add_spark_arguments` flags that give ``config`` back (empty settings are left to the env)."""
    argv = ["--master", config.spark_master, "--driver-memory", config.spark_driver_memory]
    argv += ["--shuffle-partitions", str(config.spark_shuffle_partitions)]
    if config.spark_executor_memory:
        argv += ["--executor-memory", config.spark_executor_memory]
    if config.spark_checkpoint_dir:
        argv += ["--checkpoint-dir", config.spark_checkpoint_dir]
    for item in config.spark_conf:
        argv += ["--spark-conf", item]
    return argv


def spark_path(uri: str) -> str:
    """A path Spark can read/write: a date's pointer followed (``storage.locate``), local paths as
    absolute ``file://`` URIs, other URIs as they are."""
    uri = storage.locate(uri)
    if "://" in uri:
        return uri
    return "file://" + os.path.abspath(uri)


def write_tables(
    tables: Mapping[str, DataFrame],
    final_uri: str,
    manifest: Mapping[str, Any] | Any,
    files: Mapping[str, int] | None = None,
    timings: dict[str, float] | None = None,
    progress: SparkProgress | None = None,
) -> None:
    """Write ``tables`` as Parquet (``final_uri/<name>/``) into staging, then publish atomically.

    ``files`` optionally caps the number of files of a table (``coalesce(n)``; use 1 for small
    tables — never for big ones, as coalesce also limits the parallelism of the last stage).
    ``manifest`` is a dict, or a callable ``manifest(staging_uri)`` returning one, called after all
    tables are written (so it can include metrics observed during the writes, or count rows of
    the written tables).
    ``timings`` (optional) receives ``write_<name>`` -> seconds per table; ``progress`` (optional) is told
    which table is being written.
    On any error the staging directory is removed and the published date is left untouched
    (``storage.staged``; a full disk is one ``OutOfSpace`` line).
    """
    import time

    spark = next(iter(tables.values())).sparkSession if tables else None
    with storage.staged(final_uri) as staging, quiet_task_failures(spark):
        for name, frame in tables.items():
            started = time.perf_counter()
            if progress is not None and name:
                progress.step(f"writing {name}")
            if files and files.get(name):
                frame = frame.coalesce(files[name])
            frame.write.mode("errorifexists").parquet(spark_path(f"{staging.rstrip('/')}/{name}"))
            stable_file_names(f"{staging.rstrip('/')}/{name}")
            if timings is not None:
                timings[f"write_{name}"] = round(time.perf_counter() - started, 3)
        payload = manifest(staging) if callable(manifest) else dict(manifest)
        storage.publish(staging, final_uri, payload)


def _quiet_log4j(spark: SparkSession | None):
    """The driver JVM's log4j package, where Spark's noise may be kept off the terminal; None without a JVM
    (Spark Connect) or when the CLI logs at DEBUG (everything shown)."""
    jvm = getattr(spark, "_jvm", None) if spark is not None else None
    if jvm is None or logging.getLogger("vasp").isEnabledFor(logging.DEBUG):
        return None
    return jvm.org.apache.logging.log4j


# Driver-side loggers that print a failed write task's whole Java trace (at ERROR) before the driver
# raises the same failure to Python, where the CLI turns it into one line (its trace at DEBUG).
TASK_FAILURE_LOGGERS = (
    "org.apache.spark.util.Utils",
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
)


@contextlib.contextmanager
def quiet_task_failures(spark: SparkSession | None) -> Iterator[None]:
    """Silence :data:`TASK_FAILURE_LOGGERS` for the body (a write that fails, e.g. on a full disk, then
    says so once, through the exception); a no-op without a JVM (Spark Connect) or below ERROR logging."""
    log4j = _quiet_log4j(spark)
    if log4j is None:
        yield
        return
    configurator = log4j.core.config.Configurator
    before = {name: log4j.LogManager.getLogger(name).getLevel() for name in TASK_FAILURE_LOGGERS}
    for name in TASK_FAILURE_LOGGERS:
        configurator.setLevel(name, log4j.Level.OFF)
    try:
        yield
    finally:
        for name, level in before.items():
            configurator.setLevel(name, level)


# What Spark 4.2's executor heartbeater logs, at ERROR with a NullPointerException's trace, when it reads a
# cached table's accumulator that a task is still deserializing (SPARK-59451, a race inside Spark). In a
# local session the executor lives in the driver's JVM, so the trace reached the user's terminal between a
# job's own lines; on a cluster it stays in the executors' logs, which this filter does not touch.
HEARTBEAT_RACE = "Uncaught exception in thread executor-heartbeater"  # also its own regex: no special characters


def drop_heartbeat_race_trace(spark: SparkSession) -> None:
    """Keep :data:`HEARTBEAT_RACE` out of the driver JVM's log (once per JVM); shown at the CLI's debug
    level, a no-op without a JVM (Spark Connect)."""
    log4j = _quiet_log4j(spark)
    if log4j is None:
        return
    configuration = log4j.LogManager.getContext(False).getConfiguration()
    if HEARTBEAT_RACE in str(configuration.getFilter()):
        return
    result = log4j.core.Filter.Result
    configuration.addFilter(
        log4j.core.filter.RegexFilter.createFilter(HEARTBEAT_RACE, None, False, result.DENY, result.NEUTRAL)
    )


# Spark's part files: part-<task>-<write job uuid>-c<file>.<ext>, and a local filesystem's checksum beside each
_PART_FILE = re.compile(r"^(\.?part-\d+)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-c\d+\..+)$")


def stable_file_names(uri: str) -> None:
    """Drop the write job's random id from the part files under ``uri`` (``part-00003-c000.snappy.parquet``):
    rows written again in the same order give the same files, names included."""
    filesystem, path = storage.resolve(uri)
    for info in filesystem.get_file_info(pafs.FileSelector(path, recursive=True)):
        match = _PART_FILE.match(info.base_name)
        if match and info.type == pafs.FileType.File:
            directory = info.path[: -len(info.base_name)]
            filesystem.move(info.path, directory + match.group(1) + match.group(2))


def submit_main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    config_from_args: Callable[[argparse.Namespace], Any],
    stage: Callable[[Any], Mapping[str, Any]],
    argv: list[str] | None = None,
) -> int:
    """The ``spark-submit jobs/X.py ...`` entry point of a job: same flags, output and errors as ``vasp X``.

    Parses the flags into the job's config, runs ``stage`` on it and prints its summary as one JSON line.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        summary = stage(config_from_args(args))
    except CLEAR_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0
