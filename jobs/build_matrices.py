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
7. With a given test file (``--test-input``, LightGCN's ``test.txt`` beside its ``train.txt``),
   :func:`given_table` keeps its positives for the users the build knows: the given split, where
   every such user is scored from all of its input positives against the test file's items.
8. :func:`load` writes every table into a staging directory and publishes it atomically.

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

    from vasp_jobs.common.progress import SparkProgress
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
    timestamp_col: str | None = None
    history_days: int | None = None  # event log: days of history up to the end of D (None: all of it)
    temporal_holdout_days: int = 0  # > 0: the model learns events before D - h; (D - h, D] is the temporal holdout

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
        if self.history_days is not None and self.history_days < 1:
            raise ValueError(f"history_days must be >= 1 or unset, got {self.history_days}")
        if self.temporal_holdout_days < 0:
            raise ValueError(f"temporal_holdout_days must be >= 0, got {self.temporal_holdout_days}")
        if self.history_days is not None and self.temporal_holdout_days >= self.history_days:
            raise ValueError(
                f"temporal_holdout_days={self.temporal_holdout_days} leaves no training history "
                f"in history_days={self.history_days}"
            )

    def cutoff(self, date: str) -> int | None:
        """Epoch seconds of D - h (the end of D minus ``temporal_holdout_days``); None without a temporal holdout."""
        from vasp_model.data.events import DAY_S, Window

        if not self.temporal_holdout_days:
            return None
        return Window(date).end - self.temporal_holdout_days * DAY_S

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


def extract(spark: SparkSession, input_uri: str, config: BuildConfig, date: str) -> RawInput:
    """Open the input with its format adapter (lazy; raises for a missing file/column, empty input);
    an event log (``events:DIR``) as of ``date`` (:mod:`jobs.common.eventlog`)."""
    from vasp_jobs.common import eventlog
    from vasp_jobs.common.readers import ORDER_FORMATS, read_input
    from vasp_model.data.events import Window, split_input

    location, is_log = split_input(input_uri)
    if is_log:
        return eventlog.read_log(spark, location, Window(date, config.history_days), column_options(config))
    raw = read_input(
        spark, location, config.format, config.user_col, config.item_col, config.rating_col, config.timestamp_col
    )
    if config.temporal_holdout_days and raw.spec.timestamp_col is None:
        raise ValueError(f"a temporal holdout needs event times: {input_uri} has no timestamp column")
    if config.temporal_holdout_days and raw.spec.format in ORDER_FORMATS:
        raise ValueError(
            f"a temporal holdout needs event times: {input_uri} ({raw.spec.format}) has only the order of its lines"
        )
    return raw


def column_options(config: BuildConfig) -> dict[str, str | None]:
    """The ``--*-col`` choices, as :func:`jobs.common.readers.resolve_spec` keywords."""
    return {
        "user_col": config.user_col,
        "item_col": config.item_col,
        "rating_col": config.rating_col,
        "timestamp_col": config.timestamp_col,
    }


# ---------------------------------------------------------------------------- transforms


def _first_per_item(column: str) -> Any:
    """A sorted (item_id, timestamp) struct array column reduced to one entry per item, the earliest time."""
    from pyspark.sql import functions as F

    ordered = F.col(column)
    return F.filter(ordered, lambda x, i: (i == 0) | (x["item_id"] != ordered[i - 1]["item_id"]))


def collapse_events(events: DataFrame, threshold: float) -> DataFrame:
    """Group raw events by user: one row per user plus one row per rejected row.

    Output: ``is_bad`` (bool), ``user_id`` (null for rejected rows), ``n_rows`` (events read),
    ``n_distinct`` (distinct items), ``items`` (distinct item ids, any rating, unordered),
    ``pos`` (distinct positive item ids, unordered), ``n_pos``, ``items_time`` / ``pos_time``
    (the earliest event time of each entry of ``items`` / ``pos``, epoch seconds, null without
    timestamps), ``n_late`` (late events), ``n_repeated`` (events repeating an earlier one: same
    item and time), ``bad`` (struct reason, raw, source, block, row of a rejected row; null for users).

    One shuffle: rows are partitioned by user (a rejected row by its own row id, so it
    rides along and the input is scanned once); duplicates (user, item) are collapsed: the
    item counts once and is a positive if any of its events is (``rating > threshold``, i.e.
    the highest rating wins; a null rating = implicit data = positive); its time is its first
    event's (its first positive event's in ``pos_time``). An event without an item (a CiteULike
    user with no items) makes the user known without adding an event.
    """
    from pyspark.sql import functions as F

    bad = F.col("reason").isNotNull()
    timestamp = F.col("timestamp") if "timestamp" in events.columns else F.lit(None).cast("long")
    late = F.col("late") if "late" in events.columns else F.lit(False)
    rows = events.select(
        bad.alias("is_bad"),
        F.when(bad, F.col("row").cast("string")).otherwise(F.col("user_id")).alias("key"),
        F.when(~bad, F.col("item_id")).alias("item_id"),
        F.when(~bad, F.col("rating")).alias("rating"),
        F.when(~bad, timestamp).alias("timestamp"),
        (~bad & late).alias("late"),
        F.when(bad, F.struct("reason", "raw", "source", "block", "row")).alias("bad"),
    )
    # Partition by user once (rejected rows by their own row id: they ride along, so the
    # input is scanned once), then aggregate each user without another exchange.
    rows = rows.repartition("is_bad", "key")
    has_item = F.col("item_id").isNotNull()
    positive = has_item & (F.col("rating").isNull() | (F.col("rating") > F.lit(float(threshold))))
    event = F.struct("item_id", "timestamp")
    per_user = rows.groupBy("is_bad", "key").agg(
        F.count("item_id").alias("n_rows"),
        F.collect_list(F.when(has_item, event)).alias("_all"),
        F.collect_list(F.when(positive, event)).alias("_pos"),
        F.sum(F.col("late").cast("long")).alias("n_late"),
        F.first("bad", ignorenulls=True).alias("bad"),
    )
    # An item is a positive if any of its (duplicate) events is: distinct(positive events).
    # Sorted in their own projection: the dedup below reads each array twice.
    per_user = per_user.select(
        "is_bad",
        "key",
        "n_rows",
        "n_late",
        F.sort_array("_all").alias("_all"),
        F.sort_array("_pos").alias("_pos"),
        "bad",
    )
    per_user = per_user.select(
        "is_bad",
        "key",
        "n_rows",
        "n_late",
        (F.col("n_rows") - F.size(F.array_distinct("_all"))).alias("n_repeated"),
        _first_per_item("_all").alias("_items"),
        _first_per_item("_pos").alias("_pos"),
        "bad",
    )
    return per_user.select(
        "is_bad",
        F.when(~F.col("is_bad"), F.col("key")).alias("user_id"),
        F.col("n_rows").cast("long").alias("n_rows"),
        F.size("_items").cast("long").alias("n_distinct"),
        F.transform("_items", lambda x: x["item_id"]).alias("items"),
        F.transform("_pos", lambda x: x["item_id"]).alias("pos"),
        F.size("_pos").alias("n_pos"),
        F.transform("_items", lambda x: x["timestamp"]).alias("items_time"),
        F.transform("_pos", lambda x: x["timestamp"]).alias("pos_time"),
        F.col("n_late").cast("long").alias("n_late"),
        F.col("n_repeated").cast("long").alias("n_repeated"),
        "bad",
    )


def with_training_history(per_user: DataFrame, cutoff: int | None) -> DataFrame:
    """``per_user`` plus ``train_pos`` / ``train_pos_time`` / ``n_pos_train``: the positives the model
    learns from, those first seen before ``cutoff`` (epoch seconds); all of them without a cutoff."""
    from pyspark.sql import functions as F

    if cutoff is None:
        return per_user.select(
            "*",
            F.col("pos").alias("train_pos"),
            F.col("pos_time").alias("train_pos_time"),
            F.col("n_pos").alias("n_pos_train"),
        )
    zipped = F.filter(F.arrays_zip("pos", "pos_time"), lambda x: x["pos_time"] < F.lit(int(cutoff)))
    out = per_user.select("*", zipped.alias("_z"))
    return out.select(
        *per_user.columns,
        F.transform("_z", lambda x: x["pos"]).alias("train_pos"),
        F.transform("_z", lambda x: x["pos_time"]).alias("train_pos_time"),
        F.size("_z").alias("n_pos_train"),
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
    """Each item of ``column`` as a row (user_idx, user_id, split, item_id, timestamp): ``pos`` the
    positives, ``items`` every item whatever the rating; ``timestamp`` from ``{column}_time``."""
    from pyspark.sql import functions as F

    rows = per_user.filter(~F.col("is_bad")).select(
        "user_id", F.col(f"{column}_time").alias("_t"), F.posexplode(column).alias("_p", "item_id")
    )
    rows = rows.select("user_id", "item_id", F.get(F.col("_t"), F.col("_p")).alias("timestamp"))
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
    """All users' rows (user_idx, item_id, item_idx, timestamp); ``pos_rows`` from :func:`with_item_idx`.

    On the positives: the ``interactions`` table (the model's input); on every item whatever the
    rating: the ``consumed`` table. ``timestamp``: the pair's first event (epoch seconds; null
    when the input has no time).
    """
    from pyspark.sql import functions as F

    timestamp = F.col("timestamp") if "timestamp" in pos_rows.columns else F.lit(None)
    return pos_rows.select(
        F.col("user_idx").cast("int"),
        "item_id",
        F.col("item_idx").cast("int"),
        timestamp.cast("long").alias("timestamp"),
    )


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


def given_table(test_per_user: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """(user_idx, item_id, item_idx) of each positive of the given test input whose user the build
    knows; ``item_idx`` is null for an item outside the vocabulary (still a test item: the given
    split's recall counts it as missed)."""
    from pyspark.sql import functions as F

    rows = test_per_user.filter(~F.col("is_bad")).select("user_id", F.explode("pos").alias("item_id"))
    rows = rows.join(F.broadcast(users.select("user_idx", "user_id")), "user_id")
    return with_item_idx(rows, items).select(F.col("user_idx").cast("int"), "item_id", F.col("item_idx").cast("int"))


def given_read_counts(test_per_user: DataFrame) -> dict[str, int]:
    """Every row of the given test input, counted once: ``input_rows`` = ``positives`` (distinct
    positive (user, item) pairs) + ``duplicate_rows`` (a pair's repeats) + ``non_positive_rows``
    (pairs at or below the threshold) + ``quarantined_rows``."""
    from pyspark.sql import functions as F

    good = ~F.col("is_bad")
    read = test_per_user.agg(
        F.sum(F.when(good, F.col("n_rows")).otherwise(0)).alias("events"),
        F.sum(F.when(good, F.col("n_distinct")).otherwise(0)).alias("pairs"),
        F.sum(F.col("is_bad").cast("long")).alias("quarantined_rows"),
        F.sum(F.when(good, F.col("n_pos")).otherwise(0)).alias("positives"),
    ).first()
    out = {k: int(v or 0) for k, v in read.asDict().items()}
    events, pairs = out.pop("events"), out.pop("pairs")
    out |= {
        "input_rows": events + out["quarantined_rows"],
        "duplicate_rows": events - pairs,
        "non_positive_rows": pairs - out["positives"],
    }
    return out


def given_written_counts(given: DataFrame, read: dict[str, int]) -> dict[str, int]:
    """``read`` plus the written ``given`` table's users and items in / outside the vocabulary, and
    the positives of users the build does not know (not evaluated)."""
    from pyspark.sql import functions as F

    table = given.agg(
        F.countDistinct("user_idx").alias("users"),
        F.count(F.col("item_idx")).alias("holdout"),
        F.count(F.when(F.col("item_idx").isNull(), 1)).alias("oov"),
    ).first()
    out = {**read, **{k: int(v or 0) for k, v in table.asDict().items()}}
    out["unknown_user_positives"] = out["positives"] - out["holdout"] - out["oov"]
    return out


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
    tables: dict[str, DataFrame],
    warehouse: str,
    date: str,
    manifest: Any,
    timings: dict[str, float] | None = None,
    progress: SparkProgress | None = None,
) -> str:
    """Write the feature tables into staging and publish ``features/dt=D`` atomically."""
    from vasp_jobs.common.spark import write_tables

    final = layout.features_dir(warehouse, date)
    write_tables(tables, final, manifest, timings=timings, progress=progress)
    return final


# ---------------------------------------------------------------------------- the job


def quarantine_reasons(per_user: DataFrame, quarantined_rows: int) -> dict[str, int]:
    """Quarantined rows by reason, sorted (no Spark job when there are none)."""
    if not quarantined_rows:
        return {}
    rows = per_user.filter("is_bad").groupBy("bad.reason").count().collect()
    return dict(sorted((r["reason"], int(r["count"])) for r in rows))


def input_counts(per_user: DataFrame, config: BuildConfig, input_uri: str) -> tuple[dict[str, int], dict[str, int]]:
    """(counts, quarantined rows by reason) of the collapsed input; ``ValueError`` when nothing can be built."""
    from pyspark.sql import functions as F

    pos = F.col("n_pos_train") if "n_pos_train" in per_user.columns else F.col("n_pos")
    kept = pos >= config.min_user_interactions
    stats = per_user.agg(
        F.sum(F.when(~F.col("is_bad"), F.col("n_rows")).otherwise(0)).alias("events"),
        F.sum(F.col("is_bad").cast("long")).alias("quarantined_rows"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_distinct")).otherwise(0)).alias("used_rows"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_pos")).otherwise(0)).alias("positives"),
        F.count(F.when(~F.col("is_bad"), 1)).alias("users"),
        F.count(F.when(F.col("n_pos") > 0, 1)).alias("users_with_positive"),
        F.count(F.when(kept, 1)).alias("users_kept"),
        F.sum(F.when(kept, pos).otherwise(0)).alias("positives_kept"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_late")).otherwise(0)).alias("late_events"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_repeated")).otherwise(0)).alias("repeated_events"),
        F.sum(F.when(~F.col("is_bad"), F.col("n_pos") - pos).otherwise(0)).alias("temporal_holdout_positives"),
    ).first()
    counts = {k: int(v or 0) for k, v in stats.asDict().items()}
    counts["input_rows"] = counts["events"] + counts["quarantined_rows"]
    counts["duplicate_rows"] = counts["events"] - counts["used_rows"]
    if counts["input_rows"] == 0:
        raise ValueError(f"input has no rows: {input_uri}")
    reasons = quarantine_reasons(per_user, counts["quarantined_rows"])
    if counts["users"] == 0:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        raise ValueError(f"no usable rows in {input_uri}: all {counts['input_rows']} rows were rejected ({detail})")
    if counts["users_kept"] == 0:
        before = " before the temporal holdout" if config.temporal_holdout_days else ""
        raise ValueError(
            f"no user has >= {config.min_user_interactions} positives (rating > {config.threshold}){before} "
            f"in {input_uri}"
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
    train_rows: DataFrame | None = None,
) -> dict[str, DataFrame]:
    """Every table of ``features/dt=D`` (lazy), each sorted for compact files. ``pos_rows``: every
    positive (the scoring input); ``train_rows``: those before the temporal cutoff (default: all),
    from which the held-out splits and the A/B copies are drawn."""
    from pyspark.sql import functions as F

    tables: dict[str, DataFrame] = {
        "items": items.coalesce(1).sortWithinPartitions("item_idx"),
        "users": users.select("user_idx", "user_id", "split").coalesce(1).sortWithinPartitions("user_idx"),
        "interactions": build_interactions(pos_rows).sortWithinPartitions("user_idx", "item_id"),
        "consumed": build_interactions(with_item_idx(item_rows(per_user, users, "items"), items)).sortWithinPartitions(
            "user_idx", "item_id"
        ),
    }
    train_rows = pos_rows if train_rows is None else train_rows
    for split in ("validation", "test"):
        table = heldout_table(train_rows.filter(F.col("split") == split), split, config)
        tables[split] = table.coalesce(1).sortWithinPartitions("user_idx", "role", "item_idx")
    tables["train_ab"] = ab_table(train_rows, config)
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
    spark: SparkSession,
    input_uri: str,
    warehouse: str,
    date: str,
    config: BuildConfig,
    input_info: dict | None = None,
    test_input: str | None = None,
) -> dict[str, Any]:
    """Run the whole build for one date; returns the manifest (also written beside the tables).
    ``test_input``: a given test file in the input's format (the given split)."""
    import concurrent.futures

    from pyspark.sql import functions as F

    from vasp_jobs.common import eventlog
    from vasp_jobs.common.progress import SparkProgress
    from vasp_jobs.common.readers import fingerprint
    from vasp_model.data.events import Window, split_input

    layout.check_date(date)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    mark = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - mark[0], 3)
        mark[0] = now

    raw = extract(spark, input_uri, config, date)
    # Hash the input's bytes in a thread while Spark works (hashlib releases the GIL).
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    location, is_log = split_input(input_uri)
    if is_log:
        input_fp = pool.submit(
            eventlog.fingerprint, location, Window(date, config.history_days), column_options(config)
        )
    else:
        input_fp = pool.submit(fingerprint, input_uri)
    raw_test = test_per_user = None
    if test_input:
        raw_test = extract(spark, test_input, config, date)
        test_fp = pool.submit(fingerprint, test_input)
        test_per_user = collapse_events(raw_test.events, config.threshold).persist()
    pool.shutdown(wait=False)
    cutoff = config.cutoff(date)
    per_user = with_training_history(collapse_events(raw.events, config.threshold), cutoff).persist()
    try:
        with SparkProgress(spark, f"build {date}") as progress:
            progress.step("reading the input")
            counts, reasons = _read_counts(per_user, config, input_uri)
            lap("read_collapse")
            n_heldout = config.heldout_count(counts["users_kept"])

            progress.step("assigning users and items")
            users_all = per_user.filter(~F.col("is_bad")).select("user_id", F.col("n_pos_train").alias("n_pos"))
            users = assign_users(users_all, n_heldout, config.min_user_interactions, config.seed).persist()
            base_rows = item_rows(per_user, users, "train_pos")
            items = build_items(base_rows).persist()
            n_items = items.count()
            train_rows = with_item_idx(base_rows, items)
            pos_rows = train_rows if cutoff is None else with_item_idx(item_rows(per_user, users, "pos"), items)
            lap("users_items")

            lines = raw.lines if counts["quarantined_rows"] else None
            tables = feature_tables(per_user, users, items, pos_rows, lines, config, train_rows)
            given_read: dict[str, int] = {}
            if test_per_user is not None:
                progress.step("reading the given test input")
                given_read = given_read_counts(test_per_user)
                test_lines = raw_test.lines if given_read["quarantined_rows"] else None
                bad = quarantine_table(test_per_user, test_lines)
                tables["quarantine"] = (
                    tables["quarantine"].unionByName(bad).coalesce(1).sortWithinPartitions("source", "line")
                )
                given = given_table(test_per_user, users, items)
                tables[layout.GIVEN_TABLE] = given.coalesce(1).sortWithinPartitions("user_idx", "item_id")

            by_split = users.groupBy("split").agg(F.count("*").alias("users"), F.sum("n_pos").alias("positives"))
            split_counts = {r["split"]: (int(r["users"]), int(r["positives"] or 0)) for r in by_split.collect()}
            info = input_info or {}
            lap("plan")

            def manifest(staging: str) -> dict[str, Any]:
                from vasp_jobs.common.spark import spark_path

                progress.step("counting the written tables")

                def table(name: str) -> DataFrame:
                    return spark.read.parquet(spark_path(f"{staging.rstrip('/')}/{name}"))

                out = {k: v for k, v in counts.items() if k != "events"}
                out.update(
                    items=n_items,
                    heldout_users_per_split=n_heldout,
                    quarantine_by_reason=dict(sorted(reasons.items())),
                    **written_counts(table, split_counts),
                )
                temporal = None
                if cutoff is not None:
                    temporal = {"holdout_days": config.temporal_holdout_days, "cutoff": cutoff}
                given = None
                if raw_test is not None:
                    given = {
                        "input": {**test_fp.result(), "format": raw_test.spec.describe()},
                        "counts": given_written_counts(table(layout.GIVEN_TABLE), given_read),
                        "quarantine_by_reason": quarantine_reasons(test_per_user, given_read["quarantined_rows"]),
                    }
                return {
                    "schema_version": layout.SCHEMA_VERSION,
                    "dataset": "features",
                    "date": date,
                    "temporal": temporal,
                    "given": given,
                    "input": {**input_fp.result(), **info, "format": raw.spec.describe()},
                    "params": dataclasses.asdict(config),
                    "seed": config.seed,
                    "counts": out,
                    "tables": list(tables),
                    "spark": {"version": spark.version, "master": spark.sparkContext.master},
                    "seconds": round(time.perf_counter() - started, 3),
                    "timings": timings,
                }

            final = load(tables, warehouse, date, manifest, timings, progress)
            result = storage.read_json(f"{final}/{storage.MANIFEST}")
            result["path"] = final
            return result
    finally:
        per_user.unpersist()
        if test_per_user is not None:
            test_per_user.unpersist()


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vasp_jobs.common.readers import FORMATS
    from vasp_jobs.common.spark import add_spark_arguments

    parser.add_argument(
        "--input",
        default=None,
        help="Interaction file or directory (CSV, Parquet, u.data, ratings.dat, user_artists.dat, users.dat, "
        "LightGCN train.txt, SASRec user-item lines with --format user-item-seq). "
        "Omitted: generate a synthetic data set (vasp synth) into the run directory and use it. "
        "events:DIR reads DIR as an append-only event log (as --events does).",
    )
    parser.add_argument(
        "--events",
        default=None,
        help="Append-only event log: a directory of date partitions dt=YYYY-MM-DD/ (or of files), CSV or "
        "Parquet with a timestamp column; the build reads the history as of --date, never a later event.",
    )
    parser.add_argument(
        "--test-input",
        default=None,
        help="A given test file in --input's format (LightGCN's test.txt beside its train.txt): every user it "
        "names is also evaluated from all of its --input positives against these items (the given split, "
        "metrics @20 by LightGCN's definitions beside vae_cf's).",
    )
    parser.add_argument(
        "--history-days", type=int, default=None, help="Event log: days of history up to the end of --date (all)."
    )
    parser.add_argument(
        "--timestamp-col", default=None, help="Event time column (default: timestamp/ts/event_time/time if present)."
    )
    parser.add_argument(
        "--temporal-holdout-days",
        type=int,
        default=None,
        help="Hold out the last N days up to the end of --date: the model learns the earlier events and is "
        "also evaluated on the next period (0: off).",
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
    test_input: str | None = None  # a given test file: the given split (LightGCN's train.txt / test.txt)

    def __post_init__(self) -> None:
        from vasp_model.data.events import split_input

        layout.check_date(self.date)
        if self.test_input is None:
            return
        if not self.input or split_input(self.input)[1] or split_input(self.test_input)[1]:
            raise ValueError("--test-input goes with a training file given as --input (not an event log or the demo)")
        if self.build.temporal_holdout_days:
            raise ValueError("--test-input and --temporal-holdout-days are two test protocols: choose one")


def config_from_args(args: argparse.Namespace) -> BuildStageConfig:
    """The stage's config from the flags of :func:`add_arguments` (unset flags: ``VASP_*`` env, then defaults)."""
    import datetime as dt

    from vasp_jobs.common.spark import spark_config_from_args
    from vasp_model.data.events import EVENTS_PREFIX

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
            "timestamp_col": args.timestamp_col,
            "history_days": args.history_days,
            "temporal_holdout_days": args.temporal_holdout_days,
        },
    )
    if args.events and args.input:
        raise ValueError("give either --input or --events, not both")
    return BuildStageConfig(
        date=args.date or dt.datetime.now(dt.UTC).date().isoformat(),
        warehouse=args.warehouse or defaults.default_warehouse(),
        input=EVENTS_PREFIX + args.events if args.events else args.input,
        build=build,
        spark=spark_config_from_args(args, APP_NAME),
        test_input=args.test_input,
    )


def to_argv(config: BuildStageConfig) -> list[str]:
    """The flags of :func:`add_arguments` that give ``config`` back (the arguments of ``spark-submit``)."""
    from vasp_jobs.common.spark import spark_argv

    build = config.build
    argv = ["--date", config.date, "--warehouse", config.warehouse]
    argv += ["--input", config.input] if config.input else []
    argv += ["--test-input", config.test_input] if config.test_input else []
    argv += ["--threshold", str(build.threshold), "--min-user-interactions", str(build.min_user_interactions)]
    argv += ["--heldout-users", str(build.heldout_users)] if build.heldout_users is not None else []
    argv += ["--holdout-fraction", str(build.holdout_fraction), "--ab-copies", str(build.ab_copies)]
    argv += ["--seed", str(build.seed), "--format", build.format]
    argv += ["--temporal-holdout-days", str(build.temporal_holdout_days)]
    for flag, value in (
        ("--user-col", build.user_col),
        ("--item-col", build.item_col),
        ("--rating-col", build.rating_col),
        ("--timestamp-col", build.timestamp_col),
        ("--history-days", build.history_days),
    ):
        argv += [flag, str(value)] if value is not None else []
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
    "late_events",
    "repeated_events",
    "temporal_holdout_positives",
)


@locked("build")
def build_stage(config: BuildStageConfig) -> dict[str, Any]:
    """Stage ``build``: publish features/dt=D; returns a summary (path, date, seconds, the main counts)."""
    from vasp_jobs.common.eventlog import log_files
    from vasp_jobs.common.readers import check_input
    from vasp_jobs.common.spark import get_session
    from vasp_model.data.events import Window, split_input

    info: dict = {}
    if config.input:
        input_uri = config.input
        location, is_log = split_input(input_uri)
        # A missing or unreadable input (or a missing partition of a log) fails before Spark starts.
        if is_log:
            log_files(location, Window(config.date, config.build.history_days), column_options(config.build))
        else:
            check_input(input_uri, config.build.format)
    else:
        input_uri, info = _default_input(config.build.seed)
    if config.test_input:
        check_input(config.test_input, config.build.format)
    spark = get_session(config.spark)
    manifest = build(spark, input_uri, config.warehouse, config.date, config.build, info, config.test_input)
    summary = {"path": manifest["path"], "date": config.date, "seconds": manifest["seconds"]}
    summary.update({k: manifest["counts"][k] for k in SUMMARY_COUNTS})
    if manifest.get("given"):
        summary["given"] = manifest["given"]["counts"]
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``spark-submit jobs/build_matrices.py ...``."""
    from vasp_jobs.common.spark import submit_main

    return submit_main("build_matrices", __doc__.splitlines()[0], add_arguments, config_from_args, build_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
