"""Input adapters: one per interaction-file format, one shared parsing core.

Every adapter turns its input into the same *raw event* DataFrame (:data:`EVENT_COLUMNS`):

``user_id`` / ``item_id`` (strings, as they appear in the input), ``rating`` (double; null
when the format has no rating or the rating is a play count, i.e. every event is a
positive), ``reason`` (null for a good row, else why the row is rejected), ``raw`` (the
original line / row as JSON), and ``source`` / ``block`` / ``row`` (file, split start,
``monotonically_increasing_id``) from which :func:`with_line_numbers` recovers the physical
line number of a row only when it is needed (quarantined rows, CiteULike's user ids, SASRec's order).

Formats (``--format``, autodetected from the file name and first line when ``auto``):

============= ==============================================================================
csv           delimited text with a header (``,`` or tab, sniffed); ``--user-col/--item-col/
              --rating-col`` pick the columns (defaults try user_id/userId/..., item_id/movieId/...)
parquet       a Parquet file or directory; same column options
udata         MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header
ratings-dat   MovieLens ``ratings.dat``: ``user::item::rating::timestamp``, no header
lastfm        Last.fm HetRec ``user_artists.dat``: ``userID<TAB>artistID<TAB>weight`` with header;
              weight is a play count (validated: a non-negative number), every row is a positive
citeulike     CiteULike ``users.dat``: one line per user, ``count item item ...`` (0-based
              item ids); the user id is the 0-based line number
user-items    LightGCN ``train.txt``/``test.txt``: one line per user, ``user item item ...``
              (whitespace, non-negative integer ids); a line with only a user id is a user
              without events; every pair is a positive
user-item-seq SASRec: ``user item`` per line (whitespace, non-negative integer ids), each user's
              lines in time order; every pair is a positive. ``timestamp`` is the line's position,
              not a time: its 1-based line number, counted on through the files of a directory
              in the order of their paths (so the build's ``timestamp`` orders each user's events;
              a temporal holdout in days does not apply and is refused)
============= ==============================================================================

Autodetection (``auto``) takes a name that says the format (``*.parquet``, ``u.data``,
``ratings.dat``, ``user_artists.dat``, ``users.dat`` of integers) or a first line with ``::``;
``user-items`` only for ``train.txt``/``test.txt`` whose first lines are integers with a varying
count that is not a leading item count (CiteULike's layout). ``user-item-seq`` is never guessed
(two integers per line could be any edge list): pass ``--format user-item-seq``. Anything else is
read as ``csv``.

Rejection reasons (the ``reason`` column, see :data:`REASONS`): ``empty_line``,
``wrong_column_count``, ``null_user``, ``null_item``, ``null_rating``, ``non_numeric_rating``,
``nan_rating`` (NaN or infinite), ``negative_rating``, ``unparsable_line`` (CiteULike,
user-items, user-item-seq: a token that is not a non-negative integer), ``count_mismatch``
(CiteULike), ``unbalanced_quotes`` (CSV). A field is *null* when it is empty
or one of ``null``/``none``/``nan``/``\\N`` (case-insensitive). CSV fields are trimmed and may be
quoted as RFC 4180 says (``"a,b"`` holds a delimiter, ``""`` inside quotes is one ``"``); a line
with an odd number of ``"`` (a quoted field left open, or one spanning lines, which is not
supported) is quarantined, never silently mangled.

Fatal problems raise before anything is written (:func:`check_input`, before Spark reads):
``FileNotFoundError`` for a missing input, ``ValueError`` naming the file for an empty input, a
directory without data files, a Parquet file that is not readable (truncated, not Parquet) or a
missing required column.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from vasp_model.data import storage

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

FORMATS = ("auto", "csv", "parquet", "udata", "ratings-dat", "lastfm", "citeulike", "user-items", "user-item-seq")
ORDER_FORMATS = ("user-item-seq",)  # ``timestamp`` is the line's position in the input, not a time
REASONS = (
    "empty_line",
    "wrong_column_count",
    "null_user",
    "null_item",
    "null_rating",
    "non_numeric_rating",
    "nan_rating",
    "negative_rating",
    "unparsable_line",
    "count_mismatch",
    "unbalanced_quotes",
    "null_timestamp",
    "unparsable_timestamp",
)
EVENT_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "reason", "raw", "source", "block", "row")
HEADER_FORMATS = ("csv", "lastfm")  # the delimited formats whose first line names the columns
NULL_TOKENS = ("", "null", "none", "nan", "\\n")

USER_CANDIDATES = ("user_id", "userId", "userid", "user", "UserID", "userID", "uid")
ITEM_CANDIDATES = ("item_id", "itemId", "itemid", "item", "movieId", "movie_id", "MovieID", "artistID", "iid")
RATING_CANDIDATES = ("rating", "Rating", "ratings", "score")
TIMESTAMP_CANDIDATES = ("timestamp", "Timestamp", "ts", "event_time", "time", "datetime")
MILLIS_ABOVE = 1e11  # a numeric timestamp this large is in milliseconds (1e11 s is the year 5138)
# A delimiter outside double quotes: followed by an even number of quotes up to the end of the line
# (possessive quantifiers: linear time, no backtracking). Only lines holding a quote pay for it.
_OUTSIDE_QUOTES = '(?=(?:[^"]*+"[^"]*+")*+[^"]*+$)'


@dataclasses.dataclass(frozen=True)
class ReadSpec:
    """How to parse one input: the resolved format and column layout."""

    format: str
    delimiter: str = ","
    header: str | None = None  # the header line to drop (delimited formats with a header)
    columns: tuple[str, ...] = ()  # all column names, in file order
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str | None = None
    implicit: bool = False  # the rating column is a count: validated, but every row is a positive
    timestamp_col: str | None = None  # event time: epoch seconds / milliseconds or an ISO 8601 string
    timestamp_required: bool = False  # an event log: a row without a parsable time is rejected

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RawInput:
    """The parsed input: raw events plus the per-line frame used to number lines."""

    spec: ReadSpec
    events: DataFrame
    lines: DataFrame  # (source, block, row) of every physical line/row, for line numbering


# ---------------------------------------------------------------------------- files


def _list_files(uri: str) -> list[pafs.FileInfo]:
    """The data files of ``uri`` (a file, or a directory's visible files, recursively)."""
    filesystem, path = storage.resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {uri}")
    if info.type == pafs.FileType.File:
        return [info]
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [
        f
        for f in found
        if f.type == pafs.FileType.File
        and not any(part.startswith(("_", ".")) for part in f.path[len(path) :].split("/") if part)
    ]
    return sorted(files, key=lambda f: f.path)


def data_files(uri: str) -> list[pafs.FileInfo]:
    """:func:`_list_files`, with ``ValueError`` when there is none (an empty directory)."""
    files = _list_files(uri)
    if not files:
        raise ValueError(f"input has no data files: {uri} (an empty directory, or only hidden/_ files)")
    return files


def check_input(uri: str, fmt: str = "auto") -> list[pafs.FileInfo]:
    """The data files of ``uri`` after the checks Spark would fail on with a stack trace: it exists
    (``FileNotFoundError``), holds a data file, every Parquet file has a readable footer
    (``ValueError`` naming the file and the cause), and it holds a row: not only a header, not only
    Parquet schemas (``ValueError``)."""
    files = data_files(uri)
    filesystem, _ = storage.resolve(uri)
    kind = detect_format(uri) if fmt == "auto" else fmt
    if kind == "parquet":
        rows = 0
        for f in files:
            try:
                rows += pq.read_metadata(f.path, filesystem=filesystem).num_rows
            except (pa.ArrowException, OSError) as exc:
                name = uri if len(files) == 1 and f.type == pafs.FileType.File else f.path
                raise ValueError(f"input {name} is not a readable Parquet file ({exc})") from exc
        if rows == 0:
            raise ValueError(f"input has no rows: {uri} (Parquet with a schema but zero rows)")
    elif kind in HEADER_FORMATS and _only_header(files, filesystem):
        raise ValueError(f"input has no rows: {uri} (only a header line)")
    return files


def _only_header(files: list[pafs.FileInfo], filesystem: pafs.FileSystem, probe: int = 1 << 16) -> bool:
    """Whether every non-blank line of the text files ``files`` repeats the first one (a header and no
    row, as each file of a CSV directory may repeat its header). Reads at most ``probe`` bytes of a file
    and answers False when that is not enough to tell (or for too many files): Spark counts those."""
    if len(files) > 64:
        return False
    first = None
    for f in files:
        with filesystem.open_input_stream(f.path) as src:
            head = src.read(probe)
        if len(head) == probe:
            return False
        for line in head.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                first = line if first is None else first
                if line != first:
                    return False
    return first is not None


def unreadable_input(exc: BaseException, uri: str) -> ValueError | None:
    """Spark's ``FAILED_READ_FILE`` error (a data file that fails mid-read) as a ``ValueError`` naming
    the file and the first cause; None for any other error."""
    text = str(exc)
    failed = re.search(r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+?)\.?\s", text)
    if failed is None:
        return None
    path = re.sub(r"^file:(//)?", "", failed.group(1))
    cause = re.search(r"^Caused by: (.+)$", text, re.MULTILINE)
    detail = f" ({cause.group(1).strip()})" if cause else ""
    where = uri if path == uri else f"{path} of {uri}"
    return ValueError(f"input {where} could not be read{detail}")


def fingerprint(uri: str, max_hash_bytes: int = 4 << 30) -> dict[str, object]:
    """Identify the input: sha256 of the bytes of a single file (up to ``max_hash_bytes``),
    else sha256 over the (path, size, mtime) listing of a directory / a very large file."""
    import hashlib

    files = _list_files(uri)
    filesystem, _ = storage.resolve(uri)
    total = sum(f.size or 0 for f in files)
    digest = hashlib.sha256()
    if len(files) == 1 and total <= max_hash_bytes:
        with filesystem.open_input_stream(files[0].path) as src:
            while chunk := src.read(8 << 20):
                digest.update(chunk)
        method = "sha256:bytes"
    else:
        for f in files:
            digest.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
        method = "sha256:listing"
    return {"uri": uri, "files": len(files), "bytes": total, "method": method, "sha256": digest.hexdigest()}


def _first_line(uri: str) -> str:
    files = _list_files(uri)
    if not files or all((f.size or 0) == 0 for f in files):
        raise ValueError(f"input is empty: {uri}")
    filesystem, _ = storage.resolve(uri)
    first = next(f for f in files if (f.size or 0) > 0)
    with filesystem.open_input_stream(first.path) as src:
        head = src.read(1 << 16)
    return head.decode("utf-8", errors="replace").splitlines()[0] if head else ""


def _head_lines(uri: str, probe: int = 1 << 16) -> list[str]:
    """The complete non-blank lines within the first ``probe`` bytes of the first non-empty file."""
    files = [f for f in _list_files(uri) if (f.size or 0) > 0]
    if not files:
        return []
    filesystem, _ = storage.resolve(uri)
    with filesystem.open_input_stream(files[0].path) as src:
        head = src.read(probe)
    lines = head.decode("utf-8", errors="replace").splitlines()
    if len(head) == probe:
        lines = lines[:-1]  # the last one may be cut
    return [line for line in lines if line.strip()]


def _is_user_items(lines: list[str]) -> bool:
    """Whether ``lines`` look like LightGCN's ``user item item ...`` and nothing else: integers only,
    token counts that vary (not a fixed-column file) and reach 3, and not CiteULike's leading count."""
    tokens = [line.split() for line in lines]
    if len(tokens) < 2 or not all(re.fullmatch(r"[0-9]+", t) for row in tokens for t in row):
        return False
    counts = {len(row) for row in tokens}
    counted = all(int(row[0]) == len(row) - 1 for row in tokens)
    return len(counts) > 1 and max(counts) >= 3 and not counted


def _is_parquet(uri: str) -> bool:
    files = _list_files(uri)
    return (
        bool(files)
        and all(f.path.endswith(".parquet") or f.base_name.startswith("part-") for f in files)
        and (any(f.path.endswith(".parquet") for f in files))
    )


def detect_format(uri: str) -> str:
    """Guess the format of ``uri`` from its file name and first line."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet") or _is_parquet(uri):
        return "parquet"
    if name == "u.data":
        return "udata"
    if name.endswith("ratings.dat"):
        return "ratings-dat"
    if name == "user_artists.dat":
        return "lastfm"
    first = _first_line(uri)
    if name.endswith("users.dat") and re.fullmatch(r"\s*\d+(\s+\d+)*\s*", first or "0"):
        return "citeulike"
    if name in ("train.txt", "test.txt") and _is_user_items(_head_lines(uri)):
        return "user-items"
    if "::" in first:
        return "ratings-dat"
    return "csv"


def _pick(columns: tuple[str, ...], wanted: str | None, candidates: tuple[str, ...], what: str, uri: str) -> str | None:
    if wanted:
        if wanted not in columns:
            raise ValueError(f"required {what} column {wanted!r} is missing from {uri} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    return None


def resolve_spec(
    uri: str,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    schema_columns: tuple[str, ...] | None = None,
    timestamp_col: str | None = None,
) -> ReadSpec:
    """Work out the :class:`ReadSpec` of ``uri`` (raises for a missing file/column or empty input)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    data_files(uri)  # FileNotFoundError / ValueError first
    if fmt == "auto":
        fmt = detect_format(uri)
    if fmt == "udata":
        columns = ("user", "item", "rating", "timestamp")
        return ReadSpec(fmt, "\t", None, columns, "user", "item", "rating", timestamp_col="timestamp")
    if fmt == "ratings-dat":
        columns = ("user", "item", "rating", "timestamp")
        return ReadSpec(fmt, "::", None, columns, "user", "item", "rating", timestamp_col="timestamp")
    if fmt == "citeulike":
        _first_line(uri)
        return ReadSpec(fmt, " ", None, (), "line", "item", None, implicit=True)
    if fmt == "user-items":
        _first_line(uri)
        return ReadSpec(fmt, " ", None, (), "user", "item", None, implicit=True)
    if fmt == "user-item-seq":
        _first_line(uri)
        return ReadSpec(fmt, " ", None, ("user", "item"), "user", "item", None, implicit=True, timestamp_col="line")
    if fmt == "parquet":
        columns = tuple(schema_columns or ())
    else:
        header = _first_line(uri)
        delimiter = "\t" if "\t" in header else ","
        columns = tuple(_unquote(c) for c in split_fields(header, delimiter))
    implicit = False
    if fmt == "lastfm":
        user = _pick(columns, user_col or "userID", (), "user", uri)
        item = _pick(columns, item_col or "artistID", (), "item", uri)
        rating = _pick(columns, rating_col or "weight", (), "weight", uri)
        implicit = True
    else:
        user = _pick(columns, user_col, USER_CANDIDATES, "user", uri)
        item = _pick(columns, item_col, ITEM_CANDIDATES, "item", uri)
        rating = _pick(columns, rating_col, RATING_CANDIDATES, "rating", uri)
    timestamp = _pick(columns, timestamp_col, TIMESTAMP_CANDIDATES, "timestamp", uri)
    if user is None:
        raise ValueError(f"no user column in {uri} (columns: {', '.join(columns)}); pass --user-col")
    if item is None:
        raise ValueError(f"no item column in {uri} (columns: {', '.join(columns)}); pass --item-col")
    if fmt == "parquet":
        return ReadSpec(fmt, "", None, columns, user, item, rating, implicit, timestamp)
    return ReadSpec(fmt, delimiter, header, columns, user, item, rating, implicit, timestamp)


def split_fields(line: str, delimiter: str) -> list[str]:
    """The fields of one CSV line: split at each delimiter outside double quotes (as the Spark reader does)."""
    if '"' not in line:
        return line.split(delimiter)
    return re.split(re.escape(delimiter) + _OUTSIDE_QUOTES, line)


def _unquote(text: str) -> str:
    """A field trimmed, one pair of surrounding quotes removed and ``""`` inside them made ``"``."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


# ---------------------------------------------------------------------------- Spark core


def _is_null_token(col: Column) -> Column:
    from pyspark.sql import functions as F

    return col.isNull() | ((F.length(col) <= 4) & F.lower(col).isin(*NULL_TOKENS))


def rating_checks(missing: Column, numeric: Column) -> list[tuple[Column, str]]:
    """(condition, reason) pairs validating a rating: ``missing`` says the field is absent/null,
    ``numeric`` is its value as a double (null when it does not parse)."""
    from pyspark.sql import functions as F

    return [
        (missing, "null_rating"),
        (numeric.isNull(), "non_numeric_rating"),
        (F.isnan(numeric) | (F.abs(numeric) == float("inf")), "nan_rating"),
        (numeric < 0, "negative_rating"),
    ]


def timestamp_seconds(col: Column, numeric: bool = False) -> Column:
    """Epoch seconds (long) of a timestamp field: a number (seconds; milliseconds above
    :data:`MILLIS_ABOVE`), an ISO 8601 string (UTC unless it names a zone) or a Spark timestamp;
    null when it does not parse."""
    from pyspark.sql import functions as F

    number = col.cast("double") if numeric else col.try_cast("double")
    finite = number.isNotNull() & ~F.isnan(number) & (F.abs(number) != float("inf"))
    seconds = F.when(F.abs(number) >= MILLIS_ABOVE, number / 1000.0).otherwise(number)
    from_number = F.when(finite, F.floor(seconds)).cast("long")
    if numeric:
        return from_number
    return F.coalesce(from_number, col.try_cast("timestamp").cast("long"))


def timestamp_checks(missing: Column, seconds: Column) -> list[tuple[Column, str]]:
    """(condition, reason) pairs validating an event log's time: present and parsable."""
    return [(missing, "null_timestamp"), (seconds.isNull(), "unparsable_timestamp")]


def first_failure(checks: list[tuple[Column, str]]) -> Column:
    """The reason of the first failing check (null when every check passes)."""
    from pyspark.sql import functions as F

    out = None
    for cond, reason in checks:
        out = F.when(cond, F.lit(reason)) if out is None else out.when(cond, F.lit(reason))
    return out if out is not None else F.lit(None).cast("string")


def _spark_paths(uri: str | list[str]) -> list[str]:
    from vasp_jobs.common.spark import spark_path

    return [spark_path(u) for u in ([uri] if isinstance(uri, str) else uri)]


def _text_lines(spark: SparkSession, uri: str | list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    return spark.read.text(_spark_paths(uri)).select(
        F.col("value"),
        F.col("_metadata.file_path").alias("source"),
        F.col("_metadata.file_block_start").alias("block"),
        F.monotonically_increasing_id().alias("row"),
    )


def _clean(col: Column) -> Column:
    """:func:`_unquote` on a column (no regex: this runs per field)."""
    from pyspark.sql import functions as F

    t = F.trim(col)
    quoted = t.startswith('"') & t.endswith('"') & (F.length(t) >= 2)
    return F.when(quoted, F.replace(t.substr(F.lit(2), F.length(t) - 2), F.lit('""'), F.lit('"'))).otherwise(t)


def _read_delimited(spark: SparkSession, uri: str | list[str], spec: ReadSpec) -> RawInput:
    from pyspark.sql import functions as F

    lines = _text_lines(spark, uri)
    data = lines if spec.header is None else lines.filter(F.col("value") != F.lit(spec.header))
    pattern = re.escape(spec.delimiter) if spec.delimiter != "\t" else "\t"
    split = F.split(F.col("value"), pattern, -1)
    quotes = F.lit(0)
    if spec.format == "csv":  # RFC 4180 quoting; lines without a quote take the plain split
        has_quote = F.col("value").contains('"')
        split = F.when(has_quote, F.split(F.col("value"), pattern + _OUTSIDE_QUOTES, -1)).otherwise(split)
        quotes = F.when(has_quote, F.length("value") - F.length(F.replace("value", F.lit('"'), F.lit("")))).otherwise(0)
    data = data.withColumn("_f", split).withColumn("_q", quotes)

    def field(name: str) -> Column:
        return _clean(F.get(F.col("_f"), spec.columns.index(name)))

    # Each field is its own column, so the checks below reuse it instead of re-deriving it
    # (Spark does not collapse a projection whose non-trivial expressions are referenced twice).
    fields = [field(spec.user_col).alias("_u"), field(spec.item_col).alias("_i")]
    if spec.rating_col is not None:
        fields.append(field(spec.rating_col).alias("_r"))
    if spec.timestamp_col is not None:
        fields.append(field(spec.timestamp_col).alias("_t"))
    data = data.select("value", "source", "block", "row", F.size("_f").alias("_n"), "_q", *fields)
    checks = [
        (F.trim(F.col("value")) == "", "empty_line"),
        (F.col("_q") % 2 == 1, "unbalanced_quotes"),
        (F.col("_n") != len(spec.columns), "wrong_column_count"),
        (_is_null_token(F.col("_u")), "null_user"),
        (_is_null_token(F.col("_i")), "null_item"),
    ]
    rating = F.lit(None).cast("double")
    if spec.rating_col is not None:
        data = data.withColumn("_d", F.col("_r").try_cast("double"))
        raw_rating = F.col("_r")
        rating = F.col("_d")
        missing = raw_rating.isNull() | (
            (F.length(raw_rating) <= 4) & F.lower(raw_rating).isin(*[t for t in NULL_TOKENS if t != "nan"])
        )
        checks += rating_checks(missing, rating)
    timestamp = F.lit(None).cast("long")
    if spec.timestamp_col is not None:
        data = data.withColumn("_s", timestamp_seconds(F.col("_t")))
        timestamp = F.col("_s")
        if spec.timestamp_required:
            checks += timestamp_checks(_is_null_token(F.col("_t")), timestamp)
    reason = first_failure(checks)
    events = data.select(
        F.col("_u").alias("user_id"),
        F.col("_i").alias("item_id"),
        (F.lit(None).cast("double") if spec.implicit else rating).alias("rating"),
        timestamp.alias("timestamp"),
        reason.alias("reason"),
        F.col("value").alias("raw"),
        "source",
        "block",
        "row",
    )
    return RawInput(spec, events, lines.select("source", "block", "row"))


def _read_parquet(spark: SparkSession, uri: str | list[str], spec: ReadSpec) -> RawInput:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    frame = spark.read.parquet(*_spark_paths(uri))
    columns = list(frame.columns)
    frame = frame.select(
        *columns,
        F.col("_metadata.file_path").alias("source"),
        F.col("_metadata.file_block_start").alias("block"),
        F.monotonically_increasing_id().alias("row"),
    )
    user = F.col(spec.user_col).cast("string")
    item = F.col(spec.item_col).cast("string")
    checks = [(_is_null_token(user), "null_user"), (_is_null_token(item), "null_item")]
    rating = F.lit(None).cast("double")
    if spec.rating_col is not None:
        field = frame.schema[spec.rating_col]
        if isinstance(field.dataType, T.StringType):
            rating = F.col(spec.rating_col).try_cast("double")
        else:
            rating = F.col(spec.rating_col).cast("double")
        checks += rating_checks(F.col(spec.rating_col).isNull(), rating)
    timestamp = F.lit(None).cast("long")
    if spec.timestamp_col is not None:
        kind = frame.schema[spec.timestamp_col].dataType
        if isinstance(kind, T.TimestampType | T.TimestampNTZType | T.DateType):
            timestamp = F.unix_timestamp(F.col(spec.timestamp_col).cast("timestamp"))
        else:
            timestamp = timestamp_seconds(F.col(spec.timestamp_col), numeric=isinstance(kind, T.NumericType))
        if spec.timestamp_required:
            checks += timestamp_checks(F.col(spec.timestamp_col).isNull(), timestamp)
    events = frame.select(
        user.alias("user_id"),
        item.alias("item_id"),
        (F.lit(None).cast("double") if spec.implicit else rating).alias("rating"),
        timestamp.alias("timestamp"),
        first_failure(checks).alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in columns])).alias("raw"),
        "source",
        "block",
        "row",
    )
    return RawInput(spec, events, frame.select("source", "block", "row"))


def _read_citeulike(spark: SparkSession, uri: str, spec: ReadSpec) -> RawInput:
    """CiteULike ``users.dat``: the user id is the 0-based line number, so every line is numbered."""
    from pyspark.sql import functions as F

    lines = _text_lines(spark, uri)
    numbered = with_line_numbers(lines, lines)
    tokens = F.split(F.trim(F.col("value")), r"\s+", -1)
    data = numbered.withColumn("_t", tokens)
    items = F.slice(F.col("_t"), 2, F.greatest(F.size("_t") - 1, F.lit(0)))
    reason = first_failure(
        [
            (F.trim(F.col("value")) == "", "empty_line"),
            (~F.forall(F.col("_t"), lambda t: t.rlike(r"^[0-9]+$")), "unparsable_line"),
            (F.col("_t")[0].cast("long") != F.size(items), "count_mismatch"),
        ]
    )
    events = _user_line_events(data, (F.col("line") - 1).cast("string"), items, reason)
    return RawInput(spec, events, lines.select("source", "block", "row"))


def _user_line_events(data: DataFrame, user_id: Column, items: Column, reason: Column) -> DataFrame:
    """The events of a one-line-per-user format: one row per item of a good line (``items``), one per bad
    line (``reason``); explode_outer keeps a user whose line lists no items (item_id null: a user without
    events)."""
    from pyspark.sql import functions as F

    data = data.select(
        user_id.alias("user_id"),
        F.when(reason.isNull(), items).alias("_items"),
        reason.alias("reason"),
        F.col("value").alias("raw"),
        "source",
        "block",
        "row",
    )
    return data.select(
        "user_id",
        F.explode_outer("_items").alias("item_id"),
        F.lit(None).cast("double").alias("rating"),
        F.lit(None).cast("long").alias("timestamp"),
        "reason",
        "raw",
        "source",
        "block",
        "row",
    )


def _tokens(value: Column) -> Column:
    """The whitespace-separated tokens of a line (none for a blank line)."""
    from pyspark.sql import functions as F

    return F.filter(F.split(value, r"\s+", -1), lambda t: t != "")


def _all_ids(tokens: Column) -> Column:
    """Whether every token is a non-negative integer id."""
    from pyspark.sql import functions as F

    return F.forall(tokens, lambda t: t.rlike(r"^[0-9]+$"))


def _read_user_items(spark: SparkSession, uri: str, spec: ReadSpec) -> RawInput:
    """LightGCN ``user item item ...``: one row per (user, item); a user without items is one row
    with a null item (a known user without events), as CiteULike's."""
    from pyspark.sql import functions as F

    lines = _text_lines(spark, uri)
    data = lines.withColumn("_t", _tokens(F.col("value")))
    reason = first_failure([(F.size("_t") == 0, "empty_line"), (~_all_ids(F.col("_t")), "unparsable_line")])
    items = F.slice(F.col("_t"), 2, F.greatest(F.size("_t") - 1, F.lit(0)))
    events = _user_line_events(data, F.get(F.col("_t"), 0), items, reason)
    return RawInput(spec, events, lines.select("source", "block", "row"))


def _read_user_item_seq(spark: SparkSession, uri: str, spec: ReadSpec) -> RawInput:
    """SASRec ``user item`` lines in time order: ``timestamp`` is the line's 1-based position in the
    input (the files of a directory one after the other, in the order of their paths)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    lines = _text_lines(spark, uri)
    sizes = lines.groupBy("source").agg(F.count("*").alias("_n"))
    before = F.sum("_n").over(Window.orderBy("source").rowsBetween(Window.unboundedPreceding, -1))
    offsets = sizes.select("source", F.coalesce(before, F.lit(0)).alias("_offset"))
    numbered = with_line_numbers(lines, lines).join(F.broadcast(offsets), "source", "left")
    data = numbered.withColumn("_t", _tokens(F.col("value")))
    reason = first_failure(
        [
            (F.size("_t") == 0, "empty_line"),
            (F.size("_t") != 2, "wrong_column_count"),
            (~_all_ids(F.col("_t")), "unparsable_line"),
        ]
    )
    events = data.select(
        F.get(F.col("_t"), 0).alias("user_id"),
        F.get(F.col("_t"), 1).alias("item_id"),
        F.lit(None).cast("double").alias("rating"),
        (F.col("_offset") + F.col("line")).cast("long").alias("timestamp"),
        reason.alias("reason"),
        F.col("value").alias("raw"),
        "source",
        "block",
        "row",
    )
    return RawInput(spec, events, lines.select("source", "block", "row"))


def read_input(
    spark: SparkSession,
    uri: str,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
) -> RawInput:
    """Open ``uri`` with the right adapter; the returned events are lazy (nothing is read yet)."""
    from vasp_jobs.common.spark import spark_path

    check_input(uri, fmt)
    if fmt == "auto" and detect_format(uri) == "parquet" or fmt == "parquet":
        schema_columns = tuple(spark.read.parquet(spark_path(uri)).columns)
        spec = resolve_spec(uri, "parquet", user_col, item_col, rating_col, schema_columns, timestamp_col)
        return _read_parquet(spark, uri, spec)
    spec = resolve_spec(uri, fmt, user_col, item_col, rating_col, timestamp_col=timestamp_col)
    if spec.format == "citeulike":
        return _read_citeulike(spark, uri, spec)
    if spec.format == "user-items":
        return _read_user_items(spark, uri, spec)
    if spec.format == "user-item-seq":
        return _read_user_item_seq(spark, uri, spec)
    return _read_delimited(spark, uri, spec)


def with_line_numbers(rows: DataFrame, lines: DataFrame) -> DataFrame:
    """Add ``line`` (1-based physical line / row number within its file) to ``rows``.

    ``lines`` holds (source, block, row) of *every* line of the input. Rows of one file split
    (block) are contiguous in ``row`` (``monotonically_increasing_id``), so a row's line is the
    number of lines in earlier blocks of its file plus its offset within its block. Costs one
    aggregation over ``lines``; used only for rejected rows (and CiteULike's user ids).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    blocks = lines.groupBy("source", "block").agg(F.min("row").alias("_first"), F.count("*").alias("_n"))
    before = F.sum("_n").over(Window.partitionBy("source").orderBy("block").rowsBetween(Window.unboundedPreceding, -1))
    blocks = blocks.select("source", "block", "_first", F.coalesce(before, F.lit(0)).alias("_before"))
    joined = rows.join(F.broadcast(blocks), ["source", "block"], "left")
    return joined.withColumn("line", (F.col("_before") + F.col("row") - F.col("_first") + 1).cast("long")).drop(
        "_first", "_before"
    )
