"""Spark job ``vasp build``: raw interaction events -> ``features/dt=D/`` (the tables of vasp_model/data/layout.py).

Pipeline (extract -> pure transforms on DataFrames -> load):

1. :func:`extract` opens the input with its format adapter (``jobs.common.readers``).
2. :func:`collapse_events` groups the raw events by user in ONE shuffle: duplicates (same
   user and item) are collapsed (the highest rating wins), ratings binarized
   (``rating > threshold``, or every event when there is no rating), and rejected rows kept
   aside as one group each (so the input is scanned once even when there are bad rows). Every
   distinct item a user interacted with, whatever the rating, is kept too (``consumed``: what a
   user's list leaves out under the default exclusion rule; the model reads only the positives).
3. :func:`assign_users` gives every user a contiguous ``user_idx`` and a split: users with at
   least ``min_user_interactions`` positives are ranked by a seeded hash and the first
   ``heldout`` go to test, the next ``heldout`` to validation, the rest to train; the others are
   ``excluded`` (scored, not trained or evaluated).
4. :func:`build_items`: the vocabulary = items with a positive from a train user, ``item_idx`` by
   popularity (train users) desc, then ``item_id`` asc.
5. :func:`heldout_table`: per validation/test user, items outside the vocabulary are dropped
   (counted); a user with at least ``holdout_min_items`` (5) items gets ``int(0.2 * n)`` of them
   held out (exactly ``dawenl/vae_cf``'s ``split_train_test_proportion``: floor of the fraction,
   chosen by a seeded hash instead of ``np.random.choice``), the rest is the fold-in input.
6. :func:`ab_table`: ``ab_copies`` seeded shuffles of each train user's items, split in halves
   A (the first ``floor(n/2)`` of the shuffle) and B (the rest).
7. :func:`load` writes every table into a staging directory and publishes it atomically.

Randomness is never ``rand()``: every draw is ``xxhash64(seed, purpose, user_id[, copy], item_id)``,
so the output depends only on the input and the seed, not on partitioning or row order.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from vasp_model.core import defaults
from vasp_model.core.settings import build_config
from vasp_model.data import layout, storage
from vasp_model.data.locks import locked

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from vasp_jobs.common.readers import RawInput
    from vasp_jobs.common.spark import SparkConfig

SPLITS = ("train", "validation", "test", "excluded")
APP_NAME = "vasp-build"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Parameters of the build (env ``VASP_THRESHOLD``, ``VASP_AB_COPIES``, ...; CLI flags win)."""

    threshold: float = 3.5  # a rating strictly above it is a positive
    min_user_interactions: int = 5  # positives a user needs to be trained on / evaluated
    heldout_users: int | None = None  # users per held-out split; None = heldout_fraction, capped
    heldout_fraction: float = 0.1
    heldout_cap: int = 10_000
    holdout_fraction: float = 0.2  # share of a held-out user's items that is held out
    holdout_min_items: int = 5  # held-out users with fewer items are all fold-in
    ab_copies: int = 8
    seed: int = 98765
    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None

    def __post_init__(self) -> None:
        from vasp_jobs.common.readers import FORMATS

        if self.threshold != self.threshold:
            raise ValueError("threshold must be a number, got NaN")
        if self.min_user_interactions < 1:
            raise ValueError(f"min_user_interactions must be >= 1, got {self.min_user_interactions}")
        if self.heldout_users is not None and self.heldout_users < 0:
            raise ValueError(f"heldout_users must be >= 0, got {self.heldout_users}")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in [0, 0.5), got {self.heldout_fraction}")
        if self.heldout_cap < 0:
            raise ValueError(f"heldout_cap must be >= 0, got {self.heldout_cap}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.holdout_min_items < 1:
            raise ValueError(f"holdout_min_items must be >= 1, got {self.holdout_min_items}")
        if not 1 <= self.ab_copies <= 1000:
            raise ValueError(f"ab_copies must be in [1, 1000], got {self.ab_copies}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    def heldout_count(self, eligible_users: int) -> int:
        """Users per held-out split (validation and test each) among ``eligible_users``."""
        if self.heldout_users is not None:
            n = self.heldout_users
        else:
            n = min(self.heldout_cap, int(self.heldout_fraction * eligible_users))
        if eligible_users and 2 * n >= eligible_users:
            raise ValueError(
                f"heldout_users={n} per split leaves no training user among {eligible_users} eligible users"
            )
        return n


# ---------------------------------------------------------------------------- extract


def extract(spark: SparkSession, input_uri: str, config: BuildConfig) -> RawInput:
    """Open the input with its format adapter (lazy; raises for a missing file/column, empty input)."""
    from vasp_jobs.common.readers import read_input

    return read_input(spark, input_uri, config.format, config.user_col, config.item_col, config.rating_col)


# ---------------------------------------------------------------------------- transforms


def collapse_events(events: DataFrame, threshold: float) -> DataFrame:
    """Group raw events by user: one row per user plus one row per rejected row.

    Output: ``is_bad`` (bool), ``user_id`` (null for rejected rows), ``n_rows`` (events read),
    ``n_distinct`` (distinct items), ``items`` (distinct item ids, any rating, unordered),
    ``pos`` (distinct positive item ids, unordered), ``n_pos``,
    ``bad`` (struct reason, raw, source, block, row of a rejected row; null for users).

    One shuffle: rows are partitioned by user (a rejected row by its own row id, so it
    rides along and the input is scanned once); duplicates (user, item) are collapsed: the
    item counts once and is a positive if any of its events is (``rating > threshold``, i.e.
    the highest rating wins; a null rating = implicit data = positive). An event without an item (a CiteULike user with
    no items) makes the user known without adding an event.
    """
    from pyspark.sql import functions as F

    bad = F.col("reason").isNotNull()
    rows = events.select(
        bad.alias("is_bad"),
        F.when(bad, F.col("row").cast("string")).otherwise(F.col("user_id")).alias("key"),
        F.when(~bad, F.col("item_id")).alias("item_id"),
        F.when(~bad, F.col("rating")).alias("rating"),
        F.when(bad, F.struct("reason", "raw", "source", "block", "row")).alias("bad"),
    )
    # Partition by user once (rejected rows by their own row id: they ride along, so the
    # input is scanned once), then aggregate each user without another exchange.
    rows = rows.repartition("is_bad", "key")
    positive = F.col("item_id").isNotNull() & (F.col("rating").isNull() | (F.col("rating") > F.lit(float(threshold))))
    per_user = rows.groupBy("is_bad", "key").agg(
        F.count("item_id").alias("n_rows"),
        F.collect_list("item_id").alias("_all"),
        F.collect_list(F.when(positive, F.col("item_id"))).alias("_pos"),
        F.first("bad", ignorenulls=True).alias("bad"),
    )
    # An item is a positive if any of its (duplicate) events is: distinct(positive events).
    per_user = per_user.select(
        "is_bad",
        "key",
        "n_rows",
        F.array_distinct("_all").alias("items"),
        F.array_distinct("_pos").alias("pos"),
        "bad",
    )
    return per_user.select(
        "is_bad",
        F.when(~F.col("is_bad"), F.col("key")).alias("user_id"),
        F.col("n_rows").cast("long").alias("n_rows"),
        F.size("items").cast("long").alias("n_distinct"),
        "items",
        "pos",
        F.size("pos").alias("n_pos"),
        "bad",
    )


def _hash(seed: int, purpose: str, *cols: Any) -> Any:
    from pyspark.sql import functions as F

    return F.xxhash64(F.lit(int(seed)), F.lit(purpose), *cols)


def assign_users(users: DataFrame, n_heldout: int, min_positives: int, seed: int) -> DataFrame:
    """``users`` (user_id, n_pos) -> (user_idx, user_id, split, n_pos).

    ``user_idx`` is contiguous, ordered by (length, user_id) so numeric ids keep numeric order.
    Eligible users (``n_pos >= min_positives``) ordered by ``xxhash64(seed, "split", user_id)``:
    ranks [0, n_heldout) -> test, [n_heldout, 2 n_heldout) -> validation, the rest -> train.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    eligible = F.col("n_pos") >= min_positives
    by_id = Window.orderBy(F.length("user_id"), "user_id")
    by_hash = Window.partitionBy("_eligible").orderBy(_hash(seed, "split", F.col("user_id")), "user_id")
    ranked = users.select("user_id", "n_pos", eligible.alias("_eligible")).withColumn(
        "_rank", F.row_number().over(by_hash) - 1
    )
    split = (
        F.when(~F.col("_eligible"), "excluded")
        .when(F.col("_rank") < n_heldout, "test")
        .when(F.col("_rank") < 2 * n_heldout, "validation")
        .otherwise("train")
    )
    return ranked.select(
        (F.row_number().over(by_id) - 1).cast("int").alias("user_idx"),
        "user_id",
        split.alias("split"),
        "n_pos",
    )


def item_rows(per_user: DataFrame, users: DataFrame, column: str) -> DataFrame:
    """Each item of ``column`` as a row (user_idx, user_id, split, item_id): ``pos`` the positives,
    ``items`` every item whatever the rating."""
    from pyspark.sql import functions as F

    rows = per_user.filter(~F.col("is_bad")).select("user_id", F.explode(column).alias("item_id"))
    return rows.join(F.broadcast(users.select("user_idx", "user_id", "split")), "user_id")


def build_items(pos_rows: DataFrame) -> DataFrame:
    """The vocabulary: items with a positive from a train user; (item_idx, item_id, popularity)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = pos_rows.filter(F.col("split") == "train").groupBy("item_id").agg(F.count("*").alias("popularity"))
    order = Window.orderBy(F.col("popularity").desc(), F.col("item_id").asc())
    return counts.select(
        (F.row_number().over(order) - 1).cast("int").alias("item_idx"),
        "item_id",
        F.col("popularity").cast("long").alias("popularity"),
    )


def with_item_idx(pos_rows: DataFrame, items: DataFrame) -> DataFrame:
    """``pos_rows`` plus ``item_idx`` (null for an item outside the vocabulary)."""
    from pyspark.sql import functions as F

    return pos_rows.join(F.broadcast(items.select("item_id", "item_idx")), "item_id", "left")


def build_interactions(pos_rows: DataFrame) -> DataFrame:
    """All users' rows (user_idx, item_id, item_idx); ``pos_rows`` from :func:`with_item_idx`.

    On the positives: the ``interactions`` table (the model's input); on every item whatever the
    rating: the ``consumed`` table.
    """
    from pyspark.sql import functions as F

    return pos_rows.select(F.col("user_idx").cast("int"), "item_id", F.col("item_idx").cast("int"))


def heldout_table(pos_rows: DataFrame, split: str, config: BuildConfig) -> DataFrame:
    """(user_idx, item_idx, role) of one held-out split from ``pos_rows`` (with ``item_idx``).

    Items outside the vocabulary are dropped. A user with at least ``holdout_min_items`` items
    holds out ``floor(holdout_fraction * n)`` of them (the lowest ``xxhash64(seed, "holdout",
    user_id, item_id)``), the rest is the fold-in input; users with fewer items are all fold-in.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = pos_rows.filter((F.col("split") == split) & F.col("item_idx").isNotNull())
    per_user = Window.partitionBy("user_idx")
    ordered = per_user.orderBy(_hash(config.seed, "holdout", F.col("user_id"), F.col("item_id")), "item_id")
    n = F.count("*").over(per_user)
    n_out = F.floor(n * F.lit(float(config.holdout_fraction)))
    holdout = (n >= config.holdout_min_items) & (F.row_number().over(ordered) <= n_out)
    return rows.select(
        F.col("user_idx").cast("int"),
        F.col("item_idx").cast("int"),
        F.when(holdout, "holdout").otherwise("fold_in").alias("role"),
    )


def ab_table(pos_rows: DataFrame, config: BuildConfig) -> DataFrame:
    """``ab_copies`` A/B splits of each train user: (user_idx, copy, half, item_idx).

    Per (user, copy) the user's items are ordered by ``(murmur3(item_idx, c), item_idx)`` with
    ``c = xxhash64(seed, "ab", user_id, copy)`` - a seeded shuffle done on a primitive array
    per user (``sort_array`` of packed longs), so the big table is never sorted or shuffled.
    The first ``floor(n/2)`` items are half A, the rest half B.
    """
    from pyspark.sql import functions as F

    train = (
        pos_rows.filter(F.col("split") == "train")
        .groupBy("user_idx", "user_id")
        .agg(F.collect_list("item_idx").alias("items"))
    )
    copies = train.select(
        "user_idx",
        "user_id",
        "items",
        F.explode(F.sequence(F.lit(0), F.lit(config.ab_copies - 1))).alias("copy"),
    ).withColumn("_c", _hash(config.seed, "ab", F.col("user_id"), F.col("copy")))
    packed = F.transform(
        "items", lambda x: F.shiftleft(F.hash(x, F.col("_c")).cast("long"), 32).bitwiseOR(x.cast("long"))
    )
    shuffled = copies.select("user_idx", "copy", F.size("items").alias("_n"), F.sort_array(packed).alias("_s"))
    exploded = shuffled.select("user_idx", "copy", "_n", F.posexplode("_s").alias("_p", "_e"))
    return exploded.select(
        F.col("user_idx").cast("int"),
        F.col("copy").cast("int"),
        F.when(F.col("_p") < F.floor(F.col("_n") / 2), "A").otherwise("B").alias("half"),
        F.col("_e").bitwiseAND(F.lit(0xFFFFFFFF)).cast("int").alias("item_idx"),
    )


def quarantine_table(per_user: DataFrame, lines: DataFrame | None) -> DataFrame:
    """Rejected rows: (source, line, raw, reason); ``lines`` numbers them (None: line = -1)."""
    from pyspark.sql import functions as F

    from vasp_jobs.common.readers import with_line_numbers

    bad = per_user.filter(F.col("is_bad")).select("bad.*")
    if lines is None:
        bad = bad.withColumn("line", F.lit(-1).cast("long"))
    else:
        bad = with_line_numbers(bad, lines)
    return bad.select("source", "line", "raw", "reason")


# ---------------------------------------------------------------------------- load


def load(
    tables: dict[str, DataFrame], warehouse: str, date: str, manifest: Any, timings: dict[str, float] | None = None
) -> str:
    """Write the feature tables into staging and publish ``features/dt=D`` atomically."""
    from vasp_jobs.common.spark import write_tables

    final = layout.features_dir(warehouse, date)
    write_tables(tables, final, manifest, timings=timings)
    return final


# ---------------------------------------------------------------------------- the job


def input_counts(per_user: DataFrame, config: BuildConfig, input_uri: str) -> tuple[dict[str, int], dict[str, int]]:
    """(counts, quarantined rows by reason) of the collapsed input; ``ValueError`` when nothing can be built."""
    from pyspark.sql import functions as F

    kept = F.col("n_pos") >= config.min_user_interactions
    stats = per_user.agg(
        F.sum(F.when(~F.col("is_bad"), F.col("n_rows")).otherwise(0)).alias("events"),
        F.sum(F.col("is_bad").cast("long")).alias("quarantined_rows"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_distinct")).otherwise(0)).alias("used_rows"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_pos")).otherwise(0)).alias("positives"),
        F.count(F.when(~F.col("is_bad"), 1)).alias("users"),
        F.count(F.when(F.col("n_pos") > 0, 1)).alias("users_with_positive"),
        F.count(F.when(kept, 1)).alias("users_kept"),
        F.sum(F.when(kept, F.col("n_pos")).otherwise(0)).alias("positives_kept"),
    ).first()
    counts = {k: int(v or 0) for k, v in stats.asDict().items()}
    counts["input_rows"] = counts["events"] + counts["quarantined_rows"]
    counts["duplicate_rows"] = counts["events"] - counts["used_rows"]
    if counts["input_rows"] == 0:
        raise ValueError(f"input has no rows: {input_uri}")
    reasons: dict[str, int] = {}
    if counts["quarantined_rows"]:
        reasons = {
            r["reason"]: int(r["count"]) for r in per_user.filter("is_bad").groupBy("bad.reason").count().collect()
        }
    if counts["users"] == 0:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        raise ValueError(f"no usable rows in {input_uri}: all {counts['input_rows']} rows were rejected ({detail})")
    if counts["users_kept"] == 0:
        raise ValueError(
            f"no user has >= {config.min_user_interactions} positives (rating > {config.threshold}) in {input_uri}"
        )
    return counts, reasons


def _read_counts(per_user: DataFrame, config: BuildConfig, input_uri: str) -> tuple[dict[str, int], dict[str, int]]:
    """:func:`input_counts`, the first scan of the input: a file Spark fails to read is a ``ValueError``."""
    from py4j.protocol import Py4JJavaError

    from vasp_jobs.common.readers import unreadable_input

    try:
        return input_counts(per_user, config, input_uri)
    except Py4JJavaError as exc:
        error = unreadable_input(exc, input_uri)
        if error is None:
            raise
        raise error from exc


def feature_tables(
    per_user: DataFrame,
    users: DataFrame,
    items: DataFrame,
    pos_rows: DataFrame,
    lines: DataFrame | None,
    config: BuildConfig,
) -> dict[str, DataFrame]:
    """Every table of ``features/dt=D`` (lazy), each sorted for compact files."""
    from pyspark.sql import functions as F

    tables: dict[str, DataFrame] = {
        "items": items.coalesce(1).sortWithinPartitions("item_idx"),
        "users": users.select("user_idx", "user_id", "split").coalesce(1).sortWithinPartitions("user_idx"),
        "interactions": build_interactions(pos_rows).sortWithinPartitions("user_idx", "item_id"),
        "consumed": build_interactions(with_item_idx(item_rows(per_user, users, "items"), items)).sortWithinPartitions(
            "user_idx", "item_id"
        ),
    }
    for split in ("validation", "test"):
        table = heldout_table(pos_rows.filter(F.col("split") == split), split, config)
        tables[split] = table.coalesce(1).sortWithinPartitions("user_idx", "role", "item_idx")
    tables["train_ab"] = ab_table(pos_rows, config)
    tables["quarantine"] = quarantine_table(per_user, lines).coalesce(1).sortWithinPartitions("source", "line")
    return tables


def written_counts(table, split_counts: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The manifest's counts read back from the written tables (``table(name)`` reads one)."""
    from pyspark.sql import functions as F

    def rows_and_oov(name: str) -> Any:
        oov = F.count(F.when(F.col("item_idx").isNull(), 1))
        return table(name).agg(F.count("*").alias("rows"), oov.alias("oov")).first()

    inter_row, consumed_row = rows_and_oov("interactions"), rows_and_oov("consumed")
    out: dict[str, Any] = {
        **{f"{s}_users": split_counts.get(s, (0, 0))[0] for s in SPLITS},
        "interactions": int(inter_row["rows"]),
        "interactions_oov": int(inter_row["oov"]),
        "consumed": int(consumed_row["rows"]),
        "consumed_oov": int(consumed_row["oov"]),
        "train_ab_rows": table("train_ab").count(),
    }
    for split in ("validation", "test"):
        roles = {r["role"]: int(r["count"]) for r in table(split).groupBy("role").count().collect()}
        positives = split_counts.get(split, (0, 0))[1]
        out[f"{split}_positives"] = positives
        out[f"{split}_fold_in"] = roles.get("fold_in", 0)
        out[f"{split}_holdout"] = roles.get("holdout", 0)
        out[f"{split}_oov_dropped"] = positives - sum(roles.values())
    out["heldout_oov_dropped"] = out["validation_oov_dropped"] + out["test_oov_dropped"]
    return out


def build(
    spark: SparkSession, input_uri: str, warehouse: str, date: str, config: BuildConfig, input_info: dict | None = None
) -> dict[str, Any]:
    """Run the whole build for one date; returns the manifest (also written beside the tables)."""
    import concurrent.futures

    from pyspark.sql import functions as F

    from vasp_jobs.common.readers import fingerprint

    layout.check_date(date)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    mark = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - mark[0], 3)
        mark[0] = now

    raw = extract(spark, input_uri, config)
    # Hash the input's bytes in a thread while Spark works (hashlib releases the GIL).
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    input_fp = pool.submit(fingerprint, input_uri)
    pool.shutdown(wait=False)
    per_user = collapse_events(raw.events, config.threshold).persist()
    try:
        counts, reasons = _read_counts(per_user, config, input_uri)
        lap("read_collapse")
        n_heldout = config.heldout_count(counts["users_kept"])

        users_all = per_user.filter(~F.col("is_bad")).select("user_id", "n_pos")
        users = assign_users(users_all, n_heldout, config.min_user_interactions, config.seed).persist()
        base_rows = item_rows(per_user, users, "pos")
        items = build_items(base_rows).persist()
        n_items = items.count()
        pos_rows = with_item_idx(base_rows, items)
        lap("users_items")

        lines = raw.lines if counts["quarantined_rows"] else None
        tables = feature_tables(per_user, users, items, pos_rows, lines, config)

        by_split = users.groupBy("split").agg(F.count("*").alias("users"), F.sum("n_pos").alias("positives"))
        split_counts = {r["split"]: (int(r["users"]), int(r["positives"] or 0)) for r in by_split.collect()}
        info = input_info or {}
        lap("plan")

        def manifest(staging: str) -> dict[str, Any]:
            from vasp_jobs.common.spark import spark_path

            def table(name: str) -> DataFrame:
                return spark.read.parquet(spark_path(f"{staging.rstrip('/')}/{name}"))

            out = {k: v for k, v in counts.items() if k != "events"}
            out.update(
                items=n_items,
                heldout_users_per_split=n_heldout,
                quarantine_by_reason=dict(sorted(reasons.items())),
                **written_counts(table, split_counts),
            )
            return {
                "schema_version": layout.SCHEMA_VERSION,
                "dataset": "features",
                "date": date,
                "input": {**input_fp.result(), **info, "format": raw.spec.describe()},
                "params": dataclasses.asdict(config),
                "seed": config.seed,
                "counts": out,
                "tables": list(tables),
                "spark": {"version": spark.version, "master": spark.sparkContext.master},
                "seconds": round(time.perf_counter() - started, 3),
                "timings": timings,
            }

        final = load(tables, warehouse, date, manifest, timings)
        result = storage.read_json(f"{final}/{storage.MANIFEST}")
        result["path"] = final
        return result
    finally:
        per_user.unpersist()


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vasp_jobs.common.readers import FORMATS
    from vasp_jobs.common.spark import add_spark_arguments

    parser.add_argument(
        "--input",
        default=None,
        help="Interaction file or directory (CSV, Parquet, u.data, ratings.dat, user_artists.dat, users.dat). "
        "Omitted: generate a synthetic data set (vasp synth) into the run directory and use it.",
    )
    parser.add_argument(
        "--warehouse", default=None, help="Warehouse root URI (default ./warehouse or $VASP_WAREHOUSE)."
    )
    parser.add_argument("--date", default=None, help="Logical date D (YYYY-MM-DD) to write; default today (UTC).")
    parser.add_argument("--format", default=None, choices=FORMATS, help="Input format (default auto-detect).")
    parser.add_argument("--user-col", default=None, help="User id column of CSV/Parquet input (default: auto).")
    parser.add_argument("--item-col", default=None, help="Item id column of CSV/Parquet input (default: auto).")
    parser.add_argument(
        "--rating-col", default=None, help="Rating column (default: 'rating' if present, else all events positive)."
    )
    parser.add_argument("--threshold", type=float, default=None, help="A rating > threshold is a positive (3.5).")
    parser.add_argument(
        "--min-user-interactions",
        type=int,
        default=None,
        help="Positives a user needs to be trained/evaluated (5); others are only scored.",
    )
    parser.add_argument(
        "--heldout-users",
        type=int,
        default=None,
        help="Users in each of validation and test (default 10%% of eligible users, at most 10,000).",
    )
    parser.add_argument(
        "--holdout-fraction", type=float, default=None, help="Share of a held-out user's items held out (0.2)."
    )
    parser.add_argument("--ab-copies", type=int, default=None, help="A/B augmented copies per train user (8).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the user split, holdout and A/B shuffles.")
    add_spark_arguments(parser)


@dataclasses.dataclass(frozen=True)
class BuildStageConfig:
    """Stage ``build``: features/dt=``date`` under ``warehouse`` from ``input`` (None: the synthetic demo set)."""

    date: str
    warehouse: str
    input: str | None
    build: BuildConfig
    spark: SparkConfig

    def __post_init__(self) -> None:
        layout.check_date(self.date)


def config_from_args(args: argparse.Namespace) -> BuildStageConfig:
    """The stage's config from the flags of :func:`add_arguments` (unset flags: ``VASP_*`` env, then defaults)."""
    import datetime as dt

    from vasp_jobs.common.spark import spark_config_from_args

    build = build_config(
        BuildConfig,
        {
            "threshold": args.threshold,
            "min_user_interactions": args.min_user_interactions,
            "heldout_users": args.heldout_users,
            "holdout_fraction": args.holdout_fraction,
            "ab_copies": args.ab_copies,
            "seed": args.seed,
            "format": args.format,
            "user_col": args.user_col,
            "item_col": args.item_col,
            "rating_col": args.rating_col,
        },
    )
    return BuildStageConfig(
        date=args.date or dt.datetime.now(dt.UTC).date().isoformat(),
        warehouse=args.warehouse or defaults.default_warehouse(),
        input=args.input,
        build=build,
        spark=spark_config_from_args(args, APP_NAME),
    )


def to_argv(config: BuildStageConfig) -> list[str]:
    """The flags of :func:`add_arguments` that give ``config`` back (the arguments of ``spark-submit``)."""
    from vasp_jobs.common.spark import spark_argv

    build = config.build
    argv = ["--date", config.date, "--warehouse", config.warehouse]
    argv += ["--input", config.input] if config.input else []
    argv += ["--threshold", str(build.threshold), "--min-user-interactions", str(build.min_user_interactions)]
    argv += ["--heldout-users", str(build.heldout_users)] if build.heldout_users is not None else []
    argv += ["--holdout-fraction", str(build.holdout_fraction), "--ab-copies", str(build.ab_copies)]
    argv += ["--seed", str(build.seed), "--format", build.format]
    for flag, value in (
        ("--user-col", build.user_col),
        ("--item-col", build.item_col),
        ("--rating-col", build.rating_col),
    ):
        argv += [flag, value] if value is not None else []
    return argv + spark_argv(config.spark)


def _default_input(seed: int) -> tuple[str, dict]:
    """The synthetic demo input (generated once per seed into the run directory)."""
    from vasp_jobs import synth

    params = synth.SynthConfig(seed=seed)
    path = os.path.join(defaults.run_dir(), "synth", f"{params.tag()}.csv")
    if not os.path.exists(path):
        synth.generate(params, path)
    return path, {"synthetic": dataclasses.asdict(params)}


SUMMARY_COUNTS = (
    "input_rows",
    "used_rows",
    "quarantined_rows",
    "duplicate_rows",
    "positives",
    "users",
    "users_with_positive",
    "users_kept",
    "positives_kept",
    "items",
    "train_users",
    "validation_users",
    "test_users",
    "train_ab_rows",
    "consumed",
)


@locked("build")
def build_stage(config: BuildStageConfig) -> dict[str, Any]:
    """Stage ``build``: publish features/dt=D; returns a summary (path, date, seconds, the main counts)."""
    from vasp_jobs.common.readers import check_input
    from vasp_jobs.common.spark import get_session

    info: dict = {}
    if config.input:
        input_uri = config.input
        check_input(input_uri, config.build.format)  # a missing or unreadable input fails before Spark starts
    else:
        input_uri, info = _default_input(config.build.seed)
    spark = get_session(config.spark)
    manifest = build(spark, input_uri, config.warehouse, config.date, config.build, info)
    summary = {"path": manifest["path"], "date": config.date, "seconds": manifest["seconds"]}
    summary.update({k: manifest["counts"][k] for k in SUMMARY_COUNTS})
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``spark-submit jobs/build_matrices.py ...``."""
    from vasp_jobs.common.spark import submit_main

    return submit_main("build_matrices", __doc__.splitlines()[0], add_arguments, config_from_args, build_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
