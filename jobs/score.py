"""Spark job: top-N recommendations for EVERY user of ``features/dt=D`` -> ``recommendations/dt=D/``.

``vasp score --date D [--model-uri models:/NAME@champion] [--top-n 100]`` or
``spark-submit jobs/score.py --date D ...``.

* The driver resolves the model URI once (an alias becomes a concrete version, recorded in every
  row as ``model_version``), downloads the bundle directory and ships it to the executors
  with ``SparkContext.addArchive``, once per session and model content (a local master reads it in
  place); each executor Python process loads it once (module-level cache keyed by the bundle's
  SHA-256) on Keras' NumPy backend (``VASP_SCORE_BACKEND``, default ``numpy``: no TensorFlow in the workers),
  on CPUs scored on the host (``load_bundle``: ``ModelBundle.use_host_ease``).
* While the registered model has no champion (``models:/NAME@champion`` resolves to nothing), the
  fallback serves (``registry.serving_uri``): the champion of the EASE fallback's registered model
  (rows' ``model_version`` ``NAME/VERSION``, e.g. ``vasp-ease/1``), else popularity computed from
  the date's features (``popularity``); the manifest's ``serving`` names the kind
  (vasp | ease | popularity), the registered model and the version.
* Users come from the ``users`` table (all of them, whatever their split), grouped with their
  item ids from ``interactions`` (the positives: the model's input) and the items their list leaves
  out (the exclusion rule ``exclude``: ``consumed``, every item the user interacted with whatever
  the rating, by default) in one shuffle; batches of users go through ``mapInArrow`` into
  the bundle's ``recommend_flat`` straight from the Arrow list columns: ids unknown to the model's
  vocabulary are ignored (and counted), the excluded items are masked (and counted), the top N are
  kept (ties by lower item index), and a user with no known item gets the popularity list
  (``fallback = true``). On implicit feedback the consumed items are the positives (the build counts
  as many of each), and only the positives are read (``exclusion_source``).
  Each task returns one row per user (the list as arrays); Spark explodes it into ranked rows.
* A past date (a later night is recorded) asked for the champion is scored with the version that
  served it (``registry.serving_for_date``: its own record, else the closest earlier night's), so
  a rerun or a backfill never serves what a later night promoted; the manifest's
  ``serving_reason`` says so. The default model is ``models:/$VASP_REGISTERED_MODEL@champion``.
* Output is deterministic: each user's input is sorted, users are scored in ``user_idx`` order
  within their partition and the part files are named by partition, so scoring a date again with
  the same model writes the same files, byte for byte (a rerun pinned to the date's own record
  reuses its recorded ``partitions``).
* On a local master the job first checks that its Python workers (one per task slot: the cores over
  ``spark.task.cpus``) fit in memory together, each holding the model and a batch
  (:func:`check_scoring_memory`); if not, it stops in one line naming the ``spark.task.cpus`` that fits.
* Output columns: ``user_id``, ``rank`` (1..N), ``item_id``, ``score``, ``model_version``,
  ``fallback``; written to staging and published atomically with ``_manifest.json`` (the model
  version, the digests of the features and of their input, the rule ``exclude`` and the counts,
  ``excluded_candidates`` among them), so a rerun replaces exactly date D.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from vasp_model.core import defaults
from vasp_model.data import layout
from vasp_model.data.locks import locked
from vasp_model.mlops.gate import EASE_REGISTERED_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from vasp_jobs.common.spark import SparkConfig

log = logging.getLogger("vasp.score")
APP_NAME = "vasp-score"

# The columns of features/dt=D the job reads (Spark DDL).
READ_SCHEMAS = {
    "users": "user_idx INT, user_id STRING",
    "interactions": "user_idx INT, item_id STRING",
    "consumed": "user_idx INT, item_id STRING",
}
OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "model_version", "fallback")


def default_model_uri() -> str:
    """``models:/NAME@champion`` of the configured registered model (``VASP_REGISTERED_MODEL``, default vasp)."""
    from vasp_model.core.settings import build_config
    from vasp_model.mlops.registry import champion_uri
    from vasp_model.mlops.tracking import TrackingConfig

    return champion_uri(build_config(TrackingConfig).registered_model)


# Executor-side cache: one loaded ModelBundle per Python worker process, keyed by model identity.
_BUNDLES: dict[str, Any] = {}
# Driver-side: (Spark application id, model identity) -> name of the archive shipped with addArchive.
_SHIPPED: dict[tuple[str, str], str] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vasp_jobs.common.spark import add_spark_arguments
    from vasp_model.core.args import add_exclude_argument, add_tracking_argument, add_warehouse_argument

    parser.add_argument("--date", required=True, help="Logical date YYYY-MM-DD: scores features/dt=D.")
    parser.add_argument(
        "--model-uri",
        default=None,
        help="Model to score with: models:/NAME@ALIAS, models:/NAME/VERSION or a local ModelBundle directory "
        "(default models:/$VASP_REGISTERED_MODEL@champion, vasp@champion; a past date asked for the champion "
        "is scored with the version that served it).",
    )
    parser.add_argument(
        "--ease-registered-model",
        default=None,
        help="Registered model of the EASE fallback, which serves while --model-uri names a champion that does "
        "not exist yet (default: $VASP_EASE_REGISTERED_MODEL or vasp-ease; '': popularity serves then).",
    )
    parser.add_argument("--top-n", type=int, default=100, help="Items per user (default 100).")
    add_exclude_argument(parser)
    add_warehouse_argument(parser)
    add_tracking_argument(parser)
    parser.add_argument(
        "--batch-users",
        type=int,
        default=defaults.SCORE_BATCH_USERS,
        help=f"Users per model forward pass inside a task (default {defaults.SCORE_BATCH_USERS}).",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="Scoring partitions (0 = Spark's default parallelism, more for big populations).",
    )
    add_spark_arguments(parser)


# -- executor side --------------------------------------------------------------------------------


def _bundle(path: str, key: str, threads: int, backend: str | None = None):
    """The bundle at ``path``, loaded at most once per Python process and model (``key``), on Keras' ``backend``
    (None: the environment's) where this process has not loaded Keras yet."""
    bundle = _BUNDLES.get(key)
    if bundle is None:
        if backend and "keras" not in sys.modules:  # Keras reads its backend once, when first imported
            os.environ["KERAS_BACKEND"] = backend
        _limit_threads(threads)
        from vasp_model.recommenders.bundle import load_bundle

        _BUNDLES.clear()  # a new model for this worker: drop the old one
        bundle = load_bundle(path, threads=threads)
        _BUNDLES[key] = bundle
    return bundle


def _limit_threads(threads: int) -> None:
    """One task = ``spark.task.cpus`` cores: keep the thread pools (OpenMP's, and TensorFlow's should the model
    load on it) to that, no oversubscription; set before they start, without importing TensorFlow."""
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(name, str(threads))


def _bundle_path(name_or_path: str) -> str:
    """The bundle directory ``ship_bundle`` referred to: a path (local master) or an archive name."""
    if os.path.isabs(name_or_path):
        return name_or_path
    from pyspark import SparkFiles

    return SparkFiles.get(name_or_path)


def output_schema():
    """The published table (``recommendations/dt=D``) as Spark writes it: one row per user and rank."""
    import pyarrow as pa

    return pa.schema(
        [
            ("user_id", pa.string()),
            pa.field("rank", pa.int32(), nullable=False),
            ("item_id", pa.string()),
            ("score", pa.float32()),
            pa.field("model_version", pa.string(), nullable=False),
            ("fallback", pa.bool_()),
        ]
    )


def scored_schema():
    """What the Python tasks return: one row per user, the list in rank order (exploded by Spark)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("user_id", pa.string()),
            ("item_ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float32())),
            ("fallback", pa.bool_()),
            ("unknown_items", pa.int32()),  # input ids not in the model's vocabulary (ignored)
            ("excluded_items", pa.int32()),  # vocabulary items left out of the list (the exclusion rule)
        ]
    )


def score_lists(bundle, user_ids, item_lists, excluded_lists, top_n: int):
    """Score one chunk of users -> an Arrow RecordBatch in ``scored_schema`` (only real items, best first).

    ``user_ids`` (strings), ``item_lists`` (lists of item ids: the model's input) and ``excluded_lists``
    (lists of item ids the lists leave out; None: each user's ``item_lists``) are Arrow arrays of equal length.
    """
    import pyarrow as pa

    exclude = _flat(excluded_lists) if excluded_lists is not None else None
    rec = bundle.recommend_flat(*_flat(item_lists), top_n, exclude=exclude)
    valid = (rec.item_idx >= 0) & np.isfinite(rec.scores)  # row-major: each user's valid slots in rank order
    list_offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
    return pa.RecordBatch.from_arrays(
        [
            user_ids.cast(pa.string()),  # large_string when Spark uses large var types
            pa.ListArray.from_arrays(list_offsets, bundle.vocabulary.take(pa.array(rec.item_idx[valid]))),
            pa.ListArray.from_arrays(list_offsets, pa.array(rec.scores[valid], type=pa.float32())),
            pa.array(rec.fallback, type=pa.bool_()),
            pa.array(rec.unknown_items.astype(np.int32), type=pa.int32()),
            pa.array(rec.excluded.astype(np.int32), type=pa.int32()),
        ],
        schema=scored_schema(),
    )


def _flat(lists):
    """An Arrow list array (maybe a slice) as (offsets from 0, its values)."""
    offsets = lists.offsets.to_numpy()
    return offsets - offsets[0], lists.values.slice(offsets[0], offsets[-1] - offsets[0])


def score_partition(
    batches: Iterator,
    bundle_ref: str,
    top_n: int,
    batch_users: int,
    model_key: str,
    threads: int,
    backend: str | None = None,
):
    """``mapInArrow`` body: (user_id, item_ids[, excluded_ids]) batches -> one scored row per user, the model
    loaded on Keras' ``backend`` (:func:`_bundle`).

    Without an ``excluded_ids`` column each list leaves out the user's own items (``item_ids``).
    """
    bundle = _bundle(_bundle_path(bundle_ref), model_key, threads, backend)
    for batch in batches:
        users, items = batch.column("user_id"), batch.column("item_ids")
        excluded = batch.column("excluded_ids") if "excluded_ids" in batch.schema.names else None
        for start in range(0, batch.num_rows, batch_users):
            chunk = excluded.slice(start, batch_users) if excluded is not None else None
            yield score_lists(bundle, users.slice(start, batch_users), items.slice(start, batch_users), chunk, top_n)


# -- driver side ----------------------------------------------------------------------------------


def user_item_lists(spark, warehouse: str, date: str, partitions: int, excluded_table: str | None):
    """Every user of features/dt=D (user_idx, user_id) with the item ids of their positives (``item_ids``,
    empty if none) and of what their list leaves out (``excluded_ids``): the items of ``excluded_table``
    (:func:`exclusion_source`), none for None, and for ``interactions`` no column (the scorer leaves out
    ``item_ids`` itself: nothing read, shuffled or sent to Python twice).

    One shuffle and no join: the (user_idx, item_id) pairs of each table and one (user_idx, user_id)
    row per user are hash-partitioned by user_idx into ``partitions`` and grouped in place
    (``collect_list`` and ``max`` skip the nulls each side leaves). Repeated items are left to the
    scorer, which counts each once.
    """
    from pyspark.sql import functions as F

    from vasp_jobs.common.spark import spark_path

    def read(table: str):  # only the columns used, typed as the build job writes them (no schema inference)
        return spark.read.schema(READ_SCHEMAS[table]).parquet(spark_path(layout.feature_table(warehouse, date, table)))

    rows = read("interactions").unionByName(read("users"), allowMissingColumns=True)  # missing columns are null
    # sorted lists, users in user_idx order: a task's batches do not depend on the shuffle's fetch order
    aggregates = [F.max("user_id").alias("user_id"), F.array_sort(F.collect_list("item_id")).alias("item_ids")]
    if excluded_table not in (None, "interactions"):
        excluded = read(excluded_table).withColumnRenamed("item_id", "excluded_id")
        rows = rows.unionByName(excluded, allowMissingColumns=True)
        aggregates.append(F.array_sort(F.collect_list("excluded_id")).alias("excluded_ids"))
    lists = rows.repartition(partitions, "user_idx").groupBy("user_idx").agg(*aggregates)
    if excluded_table is None:
        lists = lists.withColumn("excluded_ids", F.array().cast("array<string>"))
    return lists.sortWithinPartitions("user_idx")


def exclusion_source(exclude: str, manifest: dict[str, Any]) -> str | None:
    """The feature table whose items each list leaves out under rule ``exclude``, read as cheaply as the
    features allow: ``consumed`` is read as ``interactions`` where the build counted as many rows in each
    (implicit feedback: every event a positive). The build writes the positives as a subset of the
    consumed pairs, both distinct per user, so equal counts are equal tables."""
    table = layout.exclusion_table(exclude)
    counts = manifest.get("counts") or {}
    same = table == "consumed" and counts.get("consumed") is not None
    return "interactions" if same and counts.get("consumed") == counts.get("interactions") else table


def transform(
    lists_df, bundle_ref: str, top_n: int, batch_users: int, model_key: str, threads: int, backend: str | None = None
):
    """The scored DataFrame: one row per user in ``scored_schema`` (the lists, best first), the workers' model on
    Keras' ``backend`` (None: their environment's)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    def fn(batches):
        from vasp_jobs.score import score_partition

        yield from score_partition(batches, bundle_ref, top_n, batch_users, model_key, threads, backend)

    return lists_df.mapInArrow(fn, from_arrow_schema(scored_schema()))


def recommendation_rows(scored_df, model_version: str):
    """One row per user and rank (``OUTPUT_COLUMNS``): the lists exploded on the JVM side.

    Exploding in Spark moves one Arrow row per user out of Python instead of one per item; a user
    with an empty list (every item excluded for them) gets no row.
    """
    from pyspark.sql import functions as F

    return scored_df.select(
        "user_id",
        F.posexplode(F.arrays_zip("item_ids", "scores")).alias("position", "entry"),
        "fallback",
    ).select(
        "user_id",
        (F.col("position") + 1).alias("rank"),
        F.col("entry.item_ids").alias("item_id"),
        F.col("entry.scores").alias("score"),
        F.lit(model_version).alias("model_version"),
        "fallback",
    )


def observed_counts(top_n: int) -> dict[str, str]:
    """The manifest's counts, as SQL aggregates over the scored rows (one per user)."""
    return {
        "rows": "sum(size(item_ids))",
        "users": "count_if(size(item_ids) > 0)",
        "fallback_users": "count_if(size(item_ids) > 0 AND fallback)",
        "unknown_items": "sum(unknown_items)",
        "users_with_unknown_items": "count_if(unknown_items > 0)",
        "users_with_full_list": f"count_if(size(item_ids) = {int(top_n)})",
        "excluded_candidates": "sum(excluded_items)",
    }


def count_rows(uri: str) -> int:
    """Rows of a Parquet table from its footers (pyarrow, no Spark job)."""
    import pyarrow.dataset as pads

    from vasp_model.data import storage

    filesystem, path = storage.resolve(uri)
    return pads.dataset(path, filesystem=filesystem, format="parquet").count_rows()


def check_scoring_memory(spark, bundle_dir: str, batch_users: int, threads: int) -> None:
    """Refuse, in one line and before any worker loads the model, a local session whose Python workers would
    not fit in memory together: one per task slot (the session's cores / ``spark.task.cpus``, ``threads``), each
    holding the bundle and a batch (:func:`vasp_model.recommenders.bundle.scoring_bytes`), beside what this
    process and the JVM hold, against ``VASP_MEMORY_BUDGET``, else what is in use plus what is available. Names
    the ``spark.task.cpus`` that fits (fewer workers, each over more threads). On a cluster the executors'
    memory is the cluster's (``spark.executor.memory``)."""
    from vasp_model.recommenders.bundle import read_metadata, scoring_bytes
    from vasp_model.train.memory import gib, memory_limit, tree_resident_bytes

    if not spark.sparkContext.master.startswith("local"):
        return
    cores = spark.sparkContext.defaultParallelism
    workers = max(1, cores // threads)
    per_worker = scoring_bytes(bundle_dir, batch_users, defaults.score_backend())
    in_use = tree_resident_bytes()
    limit, source = memory_limit(None, in_use)
    need = in_use + workers * per_worker
    if limit is None or need <= limit:
        return
    fitting = (limit - in_use) // per_worker
    if fitting >= 1:
        task_cpus = -(-cores // fitting)
        fix = f"--spark-conf spark.task.cpus={task_cpus} fits ({cores // task_cpus} worker(s) of {task_cpus} threads)"
    else:
        fix = "not even one worker fits (a pruned Neural EASE kernel, --ease-neighbours, holds far less)"
    raise ValueError(
        f"scoring with this {read_metadata(bundle_dir)['kind']} model needs about {gib(per_worker)} in each of "
        f"{workers} Python worker(s), {gib(need)} with this process and the JVM, more than {source}: {gib(limit)}; "
        f"{fix} (VASP_MEMORY_BUDGET sets the budget)"
    )


def model_identity(bundle_dir: str) -> str:
    """What a shipped and loaded model is cached by: one SHA-256 over the bundle's files (their names and
    digests, :func:`vasp_model.mlops.integrity.file_digests`, which a registered version was just verified
    with: each file is read once).

    Not the registry URI: ``models:/vasp/1`` of another tracking store is another model.
    """
    from vasp_model.mlops import integrity

    return integrity.manifest_digest(integrity.file_digests(bundle_dir))


def ship_bundle(spark, bundle_dir: str, version: str, model_key: str) -> str:
    """Where the executors find the bundle: the directory itself on a local master (same machine:
    nothing to copy, and zipping, fetching and unpacking a large bundle costs seconds), else
    the name of an archive shipped once per Spark application and model.

    ``addFile(directory)`` is refused on a cluster master (UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY), so the
    bundle goes as an uncompressed zip with ``addArchive``; each executor unpacks it to
    ``SparkFiles.get(<archive name>)``. The zip lives until the driver exits: executors that join
    later fetch it then.
    """
    import atexit
    import zipfile

    from vasp_model.mlops import integrity

    context = spark.sparkContext
    if context.master.startswith("local"):
        return os.path.abspath(bundle_dir)
    key = (context.applicationId, model_key)
    if key not in _SHIPPED:
        directory = tempfile.mkdtemp(prefix="vasp-ship-")
        atexit.register(shutil.rmtree, directory, True)
        name = f"vasp-bundle-v{version}-{uuid.uuid4().hex[:8]}.zip"
        with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_STORED) as archive:
            for member, path in integrity.bundle_files(bundle_dir):
                archive.write(path, member)
        context.addArchive(os.path.join(directory, name))
        _SHIPPED[key] = name
    return _SHIPPED[key]


def serving_bundle(
    tracking_uri: str, model_uri: str, ease_model: str, warehouse: str, date: str, dst: str
) -> tuple[str, dict[str, Any]]:
    """(bundle directory under ``dst``, ``serving``) of the model that serves ``model_uri`` on ``date``
    (``registry.serving_uri``): a registered or local bundle, downloaded, or popularity of the date's
    features. ``serving``: ``kind``, ``registered_model``, ``version``, ``resolved_uri`` and ``label``
    (the rows' ``model_version``: the version of the model asked for, else ``NAME/VERSION`` of the
    fallback, or ``popularity``), ``reason`` (why, when the date is past) and ``pinned_from`` (the date whose
    record it reproduces, else None)."""
    from vasp_model.data.features import load_items
    from vasp_model.mlops.registry import download_bundle, parse_model_uri, serving_for_date
    from vasp_model.recommenders.bundle import PopularityBundle, read_metadata

    served, pin, reason = serving_for_date(tracking_uri, warehouse, date, model_uri, ease_model)
    why = {"reason": reason, "pinned_from": pin.source if pin is not None else None}
    if served is None:
        bundle = PopularityBundle(*load_items(warehouse, date), {"date": date})
        serving = {"kind": bundle.kind, "registered_model": None, "version": None, "resolved_uri": None}
        return bundle.save(os.path.join(dst, "popularity")), {**serving, "label": bundle.kind, **why}
    bundle_dir, version, resolved = download_bundle(tracking_uri, served, os.path.join(dst, "download"))
    name = parse_model_uri(resolved)[0] if resolved.startswith("models:/") else None
    asked = parse_model_uri(model_uri)[0] if model_uri.startswith("models:/") else None
    serving = {"kind": read_metadata(bundle_dir)["kind"], "registered_model": name, "version": version}
    label = version if name == asked else f"{name}/{version}"  # a fallback's rows name its registered model
    return bundle_dir, {**serving, "resolved_uri": resolved, "label": label, **why}


def score(
    spark,
    date: str,
    warehouse: str,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    top_n: int = 100,
    batch_users: int = defaults.SCORE_BATCH_USERS,
    partitions: int = 0,
    exclude: str = defaults.DEFAULT_EXCLUDE,
    ease_model: str = EASE_REGISTERED_MODEL,
) -> dict[str, Any]:
    """Score every user of ``date`` and publish ``recommendations/dt=D``; returns the manifest.

    Each list leaves out the items of the rule ``exclude`` (:func:`vasp_model.data.layout.exclusion_table`).
    While ``model_uri`` names a champion that does not exist, the fallback serves (:func:`serving_bundle`);
    a past date is scored with what served it. ``model_uri`` None: :func:`default_model_uri`.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from vasp_jobs.common.progress import SparkProgress
    from vasp_jobs.common.spark import write_tables
    from vasp_model.data import storage
    from vasp_model.data.features import lineage, read_manifest

    layout.check_date(date)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    if batch_users <= 0:
        raise ValueError(f"batch_users must be positive, got {batch_users}")
    table = layout.exclusion_table(exclude)
    features = layout.features_dir(warehouse, date)
    if not storage.is_published(features):
        raise FileNotFoundError(f"features for {date} are not published at {features}")
    features_manifest = read_manifest(features)
    origin = lineage(features_manifest, features)
    if table and not storage.exists(layout.feature_table(warehouse, date, table)):
        raise FileNotFoundError(f"exclude={exclude} needs the {table!r} table, which {features} lacks: rebuild {date}")
    excluded_table = exclusion_source(exclude, features_manifest)
    tracking_uri = tracking_uri or defaults.default_tracking_uri()
    model_uri = model_uri or default_model_uri()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vasp-score-") as tmp:
        bundle_dir, serving = serving_bundle(tracking_uri, model_uri, ease_model, warehouse, date, tmp)
        threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
        check_scoring_memory(spark, bundle_dir, batch_users, threads)
        version = serving["label"]
        model_key = model_identity(bundle_dir)
        bundle_ref = ship_bundle(spark, bundle_dir, version, model_key)
        log.info("scoring %s with %s (%s, version %s)", date, serving["resolved_uri"], serving["kind"], version)

        n_users_input = count_rows(layout.feature_table(warehouse, date, "users"))
        if not partitions and serving["pinned_from"] == date:  # a rerun: the same partitions give the same files
            partitions = int(
                storage.read_json(f"{layout.recommendations_dir(warehouse, date)}/{storage.MANIFEST}").get("partitions")
                or 0
            )
        partitions = partitions or max(spark.sparkContext.defaultParallelism, n_users_input // 20000)
        scored = transform(
            user_item_lists(spark, warehouse, date, partitions, excluded_table),
            bundle_ref,
            top_n,
            batch_users,
            model_key=model_key,
            threads=threads,
            backend=defaults.score_backend(),
        )
        stats = Observation("vasp_score")
        scored = scored.observe(stats, *(F.expr(sql).alias(name) for name, sql in observed_counts(top_n).items()))

        published: list[dict[str, Any]] = []

        def manifest(_staging: str) -> dict[str, Any]:  # called by write_tables after the write: counts are final
            counts = {k: int(v or 0) for k, v in stats.get.items()}
            counts["users_input"] = n_users_input
            counts["users_without_list"] = n_users_input - counts["users"]
            counts["users_with_short_list"] = counts["users"] - counts["users_with_full_list"]
            published.append(
                {
                    "date": date,
                    "dataset": "recommendations",
                    "schema_version": layout.SCHEMA_VERSION,
                    "model_uri": model_uri,
                    "model_resolved_uri": serving["resolved_uri"],
                    "model_version": version,
                    "serving": {k: serving[k] for k in ("kind", "registered_model", "version")},
                    "serving_reason": serving["reason"],
                    "top_n": top_n,
                    "exclude": exclude,
                    "partitions": partitions,
                    "features": features,
                    "features_digest": origin["features_digest"],
                    "input_digest": origin["input_digest"],
                    "counts": counts,
                    "seconds": round(time.time() - started, 3),
                }
            )
            return published[-1]

        final = layout.recommendations_dir(warehouse, date)
        with SparkProgress(spark, f"score {date}") as progress:
            progress.step(f"scoring {n_users_input} users in {partitions} partitions of batches of {batch_users}")
            # Table name "" = the date directory itself: recommendations/dt=D/ holds the Parquet files directly.
            write_tables({"": recommendation_rows(scored, version)}, final, manifest, progress=progress)
    result = published[-1]
    if result["counts"]["users_without_list"]:
        log.warning("%d users got no list (every item is excluded for them)", result["counts"]["users_without_list"])
    log.info("published %s: %s", final, result["counts"])
    return result


@dataclasses.dataclass(frozen=True)
class ScoreStageConfig:
    """Stage ``score``: recommendations/dt=``date`` for every user of features/dt=``date`` from ``model_uri``."""

    date: str
    warehouse: str
    tracking_uri: str
    spark: SparkConfig
    model_uri: str = dataclasses.field(default_factory=default_model_uri)
    top_n: int = 100
    batch_users: int = defaults.SCORE_BATCH_USERS  # users per model forward pass inside a task
    partitions: int = 0  # 0 = Spark's default parallelism (more for big populations)
    exclude: str = defaults.DEFAULT_EXCLUDE  # what each list leaves out (defaults.EXCLUDE_RULES)
    ease_registered_model: str = EASE_REGISTERED_MODEL  # the fallback's registered model ('': popularity only)

    def __post_init__(self) -> None:
        layout.check_date(self.date)
        layout.exclusion_table(self.exclude)
        if self.top_n <= 0:
            raise ValueError(f"top_n must be positive, got {self.top_n}")


def config_from_args(args: argparse.Namespace) -> ScoreStageConfig:
    """The stage's config from the flags of :func:`add_arguments` (unset flags: ``VASP_*`` env, then defaults)."""
    from vasp_jobs.common.spark import spark_config_from_args
    from vasp_model.core.settings import build_config
    from vasp_model.mlops.registry import champion_uri
    from vasp_model.mlops.tracking import TrackingConfig

    tracking = build_config(
        TrackingConfig, {"tracking_uri": args.tracking_uri, "ease_registered_model": args.ease_registered_model}
    )
    return ScoreStageConfig(
        date=args.date,
        warehouse=args.warehouse or defaults.default_warehouse(),
        tracking_uri=tracking.tracking_uri,
        spark=spark_config_from_args(args, APP_NAME),
        model_uri=args.model_uri or champion_uri(tracking.registered_model),
        top_n=args.top_n,
        batch_users=args.batch_users,
        partitions=args.partitions,
        exclude=args.exclude or defaults.default_exclude(),
        ease_registered_model=tracking.ease_registered_model,
    )


def to_argv(config: ScoreStageConfig) -> list[str]:
    """The flags of :func:`add_arguments` that give ``config`` back (the arguments of ``spark-submit``)."""
    from vasp_jobs.common.spark import spark_argv

    return [
        "--date", config.date,
        "--warehouse", config.warehouse,
        "--tracking-uri", config.tracking_uri,
        "--model-uri", config.model_uri,
        "--top-n", str(config.top_n),
        "--batch-users", str(config.batch_users),
        "--partitions", str(config.partitions),
        "--exclude", config.exclude,
        "--ease-registered-model", config.ease_registered_model,
        *spark_argv(config.spark),
    ]  # fmt: skip


@locked("score")
def score_stage(config: ScoreStageConfig) -> dict[str, Any]:
    """Stage ``score``: publish recommendations/dt=D; returns the date, the model version and the counts."""
    from vasp_jobs.common.spark import get_session
    from vasp_model.data.features import require_features

    require_features(config.warehouse, config.date)  # before Spark starts: one line, no JVM noise
    defaults.score_backend()  # a backend Keras does not have: the same
    if (config.model_uri or default_model_uri()).startswith("models:/"):  # the registry says what serves
        from vasp_model.mlops import server

        server.ready_for(config.tracking_uri, f"scoring {config.date}")
    result = score(
        get_session(config.spark),
        config.date,
        config.warehouse,
        model_uri=config.model_uri,
        tracking_uri=config.tracking_uri,
        top_n=config.top_n,
        batch_users=config.batch_users,
        partitions=config.partitions,
        exclude=config.exclude,
        ease_model=config.ease_registered_model,
    )
    return {
        "date": config.date,
        "model_version": result["model_version"],
        "serving": result["serving"],
        "serving_reason": result["serving_reason"],
        "exclude": config.exclude,
        **result["counts"],
    }


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point (same flags as ``vasp score``)."""
    from vasp_jobs.common.spark import submit_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return submit_main("score", __doc__.splitlines()[0], add_arguments, config_from_args, score_stage, argv)


if __name__ == "__main__":
    # Run the importable module's main (not __main__'s) so the functions shipped to executors are
    # pickled by reference to ``vasp_jobs.score`` and share its per-process model cache.
    from vasp_jobs.score import main as _main

    sys.exit(_main())
