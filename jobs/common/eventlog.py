"""Read an append-only event log (:mod:`vasp_model.data.events`) into the raw event DataFrame.

Files are grouped by layout (format and CSV header / Parquet columns) and each group is read in
one pass by the adapters of :mod:`jobs.common.readers`, with the timestamp required. The columns
the build uses (user, item, rating, timestamp) of the newest partition are the log's schema; a
file whose columns say otherwise (renamed, missing) has all its rows quarantined as
``schema_mismatch``. :func:`window_events` then marks what the window leaves out: rows with
time at or after the end of ``D`` (``future_timestamp``) or before its start (``before_window``),
and flags ``late`` events (event date before their partition's date).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from vasp_jobs.common import readers
from vasp_model.data import events as ev
from vasp_model.data import storage

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

WINDOW_REASONS = ("future_timestamp", "before_window", "schema_mismatch")
_DT = r"/dt=(\d{4}-\d{2}-\d{2})/"


@dataclasses.dataclass(frozen=True)
class LogFile:
    """One data file of the log, with the spec it parses with (None: it has no usable columns)."""

    uri: str
    date: str | None
    spec: readers.ReadSpec | None

    @property
    def roles(self) -> tuple | None:
        """(user, item, rating, timestamp) columns; None without a usable user, item and timestamp."""
        s = self.spec
        return None if s is None or s.timestamp_col is None else (s.user_col, s.item_col, s.rating_col, s.timestamp_col)

    @property
    def layout(self) -> tuple:
        s = self.spec
        return (None, self.uri) if s is None else (s.format, s.delimiter, s.header, s.columns)


def _file_spec(uri: str, columns: dict[str, str | None]) -> readers.ReadSpec | None:
    fmt = readers.detect_format(uri)  # u.data / ratings.dat carry their timestamp at a known position
    schema = None
    if fmt == "parquet":
        filesystem, path = storage.resolve(uri)
        schema = tuple(pq.read_schema(path, filesystem=filesystem).names)
    try:
        spec = readers.resolve_spec(uri, fmt, schema_columns=schema, **columns)
    except ValueError:
        return None
    return dataclasses.replace(spec, timestamp_required=True)


def log_files(log_uri: str, window: ev.Window, columns: dict[str, str | None]) -> list[LogFile]:
    """The data files a build of ``window.date`` reads (raises for a missing partition, an empty log)."""
    partitions = ev.window_partitions(log_uri, window)
    sources = list(partitions.items()) or [(None, log_uri)]
    files = []
    for date, uri in sources:
        for info in readers._list_files(uri):
            if (info.size or 0) == 0:
                continue
            path = info.path if "://" not in log_uri else f"{log_uri.split('://', 1)[0]}://{info.path}"
            files.append(LogFile(path, date, _file_spec(path, columns)))
    if not files:
        raise ValueError(f"event log {log_uri} has no data files up to {window.date}")
    return files


def reference_roles(files: list[LogFile], log_uri: str) -> tuple:
    """The log's schema: the column roles of its newest parsable file."""
    for f in reversed(files):
        if f.roles is not None:
            return f.roles
    raise ValueError(f"event log {log_uri} has no file with user, item and timestamp columns")


def _mismatched(spark: SparkSession, group: list[LogFile]) -> readers.RawInput:
    """Every row of files whose schema is not the log's, quarantined as ``schema_mismatch``."""
    from pyspark.sql import functions as F

    spec = group[0].spec
    paths = [f.uri for f in group]
    is_parquet = spec.format == "parquet" if spec is not None else paths[0].endswith(".parquet")
    if is_parquet:
        frame = spark.read.parquet(*readers._spark_paths(paths))
        raw = F.to_json(F.struct(*[F.col(c) for c in frame.columns]))
    else:
        frame = spark.read.text(readers._spark_paths(paths))
        raw = F.col("value")
    frame = frame.select(
        raw.alias("raw"),
        F.col("_metadata.file_path").alias("source"),
        F.col("_metadata.file_block_start").alias("block"),
        F.monotonically_increasing_id().alias("row"),
    )
    lines = frame.select("source", "block", "row")  # every physical line, the header too: line numbers
    if spec is not None and spec.header is not None:
        frame = frame.filter(F.col("raw") != F.lit(spec.header))
    elif spec is None and not is_parquet:  # unknown columns: the first line of a delimited file is its header
        headers = sorted({readers._first_line(path) for path in paths})
        frame = frame.filter(~F.col("raw").isin(*headers))
    events = frame.select(
        F.lit(None).cast("string").alias("user_id"),
        F.lit(None).cast("string").alias("item_id"),
        F.lit(None).cast("double").alias("rating"),
        F.lit(None).cast("long").alias("timestamp"),
        F.lit("schema_mismatch").alias("reason"),
        "raw",
        "source",
        "block",
        "row",
    )
    return readers.RawInput(spec or readers.ReadSpec("unknown"), events, lines)


def read_log(spark: SparkSession, log_uri: str, window: ev.Window, columns: dict[str, str | None]) -> readers.RawInput:
    """The raw events of the log as of ``window`` (lazy), plus ``partition_date`` (null: unpartitioned)."""
    from pyspark.sql import functions as F

    files = log_files(log_uri, window, columns)
    roles = reference_roles(files, log_uri)
    groups: dict[tuple, list[LogFile]] = {}
    for f in files:
        groups.setdefault((f.roles == roles, f.layout), []).append(f)
    parts = []
    for (matches, _), group in groups.items():
        if not matches:
            parts.append(_mismatched(spark, group))
            continue
        spec, paths = group[0].spec, [f.uri for f in group]
        reader = readers._read_parquet if spec.format == "parquet" else readers._read_delimited
        parts.append(reader(spark, paths, spec))
    events, lines = parts[0].events, parts[0].lines
    for part in parts[1:]:
        events, lines = events.unionByName(part.events), lines.unionByName(part.lines)
    partition = F.regexp_extract(F.col("source"), _DT, 1)
    events = events.withColumn("partition_date", F.when(partition != "", partition.cast("date")))
    spec = next(f.spec for f in reversed(files) if f.roles == roles)
    return readers.RawInput(spec, window_events(events, window), lines)


def window_events(events: DataFrame, window: ev.Window) -> DataFrame:
    """Mark the rows outside ``window`` (``future_timestamp``, ``before_window``) and flag ``late``
    events (event date before their partition's date); rows already rejected keep their reason."""
    from pyspark.sql import functions as F

    good = F.col("reason").isNull()
    ts = F.col("timestamp")
    reason = F.when(good & (ts >= F.lit(window.end)), F.lit("future_timestamp"))
    if window.start is not None:
        reason = reason.when(good & (ts < F.lit(window.start)), F.lit("before_window"))
    reason = reason.otherwise(F.col("reason"))
    event_date = F.to_date(F.timestamp_seconds(ts))
    late = F.col("reason").isNull() & F.col("partition_date").isNotNull() & (event_date < F.col("partition_date"))
    return events.withColumn("reason", reason).withColumn("late", F.coalesce(late, F.lit(False)))


def fingerprint(log_uri: str, window: ev.Window, columns: dict[str, str | None]) -> dict[str, object]:
    """sha256 over the (path, size, mtime) listing of the files the build reads."""
    import hashlib

    digest = hashlib.sha256()
    total = 0
    partitions = ev.window_partitions(log_uri, window)
    for _, uri in list(partitions.items()) or [(None, log_uri)]:
        for info in readers._list_files(uri):
            total += info.size or 0
            digest.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
    return {
        "uri": ev.EVENTS_PREFIX + log_uri,
        "bytes": total,
        "method": "sha256:listing",
        "sha256": digest.hexdigest(),
        "partitions": [min(partitions), max(partitions)] if partitions else None,
        "window": window.describe(),
    }
