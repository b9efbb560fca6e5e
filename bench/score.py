"""Scoring speed: the Spark scoring job vs single-process scoring vs Spark ALS, plus a 20M-shaped population.

    .venv/bin/python bench/score.py [--reps 5] [--warmup 10] [--synthetic-sample N (extrapolated) | 0 = all 138k users]

1. ML-1M (../shared/data/ml-1m/ratings.csv) is built into features with the Spark build job
   (cached under --workdir), and a VASP model of the ``cpu`` preset's size is built for its
   vocabulary. Its weights are UNTRAINED (``--train-epochs N`` trains it first): the cost of
   scoring does not depend on the weights.
2. In the same Spark session, same data, top 100, all users:
   (a) the Spark scoring job (jobs/score.py: mapInArrow, model loaded once per worker) - users/s,
       median of --reps runs after --warmup runs. The first (cold) run, which starts the Python
       workers and loads Keras and the model in them, is printed on its own. Later runs keep
       getting faster while the JVM compiles its hot paths (here from 2.6 s to a flat 1.3-1.4 s
       after about 10 runs, the C2 compiler threads taking 0.5 s of CPU per run until then), hence
       the warm-up runs before the timed ones;
   (b) single-process batched scoring of the same bundle, loaded as the job's workers load it (the
       job's ``score_lists`` over all users, in the job's batches, lists grouped beforehand);
   (c) Spark ALS (rank 64, implicit, 10 iterations, checkpoint dir set) ``recommendForAllUsers(100)``,
       timed the same way (warm-up runs, then the median).
   (d) the floor: (a) and (b) again with the cheapest model that still scores every item (a Dense
       items -> 1 -> items), i.e. everything of the job but VASP's matmuls. ``model_*_s`` is what
       the VASP model adds to each; ``floor_over_als`` is the most any model could reach against ALS.
   Printed ratios: Spark/ALS (target >= 20x) and single-process/Spark (target <= 2x).
3. A synthetic MovieLens-20M-shaped population (138,493 users, 20,000 items, ~67 positives per
   user, Zipf popularity) scored by the Spark job with an untrained cpu-preset-sized model, all
   users by default (about 3.5 min here, in a session with ``spark.task.cpus=2``). ``--synthetic-sample
   N`` times N users and extrapolates linearly, which overstates the total: the fixed cost of
   loading and hashing the 1.7 GB model is then spread over few users. That first run is what a night
   costs (a fresh session); ``--synthetic-warm-runs`` more in the same session, whose Python worker is up
   and holds the model, give ``spark_warm_s`` and ``cold_start_s``, the difference. The first
   ``--synthetic-single-users`` of them are also scored in one process (after one warm-up batch).
   Both are printed against the compute floor (``spark_over_floor``, ``single_over_floor``; target
   <= 2x): the forward-pass FLOPs of every user (``flops_per_row``, sparse input: the first encoder
   Dense and Neural EASE cost nnz x width, not items x width) at the float32 matmul rate measured
   in this run. Unless ``--skip-als``, Spark ALS (as in 2c) fits the same population and times one
   ``recommendForAllUsers(100)`` (``als_recommend_over_spark``: ALS's time over the job's).
   The model is blended with an EASE at ``--synthetic-blend`` (default 0.1; 0: VASP alone), the served
   path whenever validation chose a blend, whose ``x B`` the floor then counts too.
   ``--synthetic-neighbours K`` prunes the model's Neural EASE kernel to K targets per item (what a wide
   catalog trains, see the README's Wide catalogs), which also sets the floor's FLOPs; the peak resident
   set of the driver, its JVM and the Python workers together is sampled while the job scores:

       .venv/bin/python bench/score.py --skip-ml1m --skip-als --synthetic-users 1000000 \
           --synthetic-items 40000 --synthetic-neighbours 512 --synthetic-single-users 0
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ML1M = REPO.parent / "shared" / "data" / "ml-1m" / "ratings.csv"
DATE = "2026-01-01"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _repeat(seconds_of, reps: int, warmup: int) -> list[float]:
    """``seconds_of()`` (a run that returns its own seconds) ``reps`` times after ``warmup`` untimed runs."""
    for _ in range(warmup):
        seconds_of()
    return [seconds_of() for _ in range(max(1, reps))]


def build_ml1m(spark, warehouse: str) -> None:
    from vasp_jobs.build_matrices import BuildConfig, build
    from vasp_model.core.settings import build_config
    from vasp_model.data import layout, storage

    if storage.is_published(layout.features_dir(warehouse, DATE)):
        return
    seconds, _ = _timed(lambda: build(spark, str(ML1M), warehouse, DATE, build_config(BuildConfig, {})))
    print(f"built ML-1M features in {seconds:.1f}s")


def cpu_model_config(neighbours: int = 0):
    """The cpu preset's model config, its Neural EASE kernel pruned to ``neighbours`` targets per item (0: dense)."""
    import dataclasses

    from vasp_model.core.config import make_config

    model_config = make_config("cpu").model
    return dataclasses.replace(model_config, ease_neighbours=neighbours or None, ease_prune_above=None)


class PeakTreeRSS:
    """The peak of the summed resident set of this process and every descendant (Spark's JVM and its
    Python workers), sampled every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # gone between listing and reading
                pass
        return total

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._sample())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_bundle(
    n_items_ids,
    popularity,
    directory: str,
    features=None,
    train_epochs: int = 0,
    neighbours: int = 0,
    blend: float = 0.0,
):
    """A cpu-preset-sized VASP bundle for this vocabulary (untrained unless train_epochs > 0; ``neighbours``:
    its Neural EASE kernel pruned to that many targets per item, every row of up to a quarter of the items read;
    ``blend`` > 0: blended with an EASE of that weight, :func:`untrained_blend`, as a trained bundle is whenever
    validation chose a blend)."""
    from vasp_model.core.config import make_config
    from vasp_model.nn.model import build_model
    from vasp_model.recommenders.bundle import ModelBundle

    if train_epochs and features is not None:
        from vasp_model.train.trainer import train

        cfg = make_config("cpu", train_overrides={"epochs": (train_epochs,), "learning_rates": (1e-3,)})
        bundle = train(features, cfg, verbose=0, evaluate_baselines=False).bundle
    else:
        n = len(n_items_ids)
        model = build_model(n, cpu_model_config(neighbours), seed=0, max_positives=max(n // 4, 1))
        bundle = ModelBundle(model, n_items_ids, popularity, metadata={"preset": "cpu", "untrained": True})
        if blend:
            bundle.blend = untrained_blend(n, blend, neighbours)
    bundle.save(directory)
    return bundle


def untrained_blend(n_items: int, weight: float, neighbours: int = 0, seed: int = 0):
    """An EASE blend at ``weight`` whose ``B`` has the shape a trained one has but random values (zero
    diagonal): dense, or with ``neighbours`` targets per item as CSR (a few fewer where a row's random
    targets repeat), as a pruned kernel's blend is. Scoring's cost does not depend on the values."""
    import scipy.sparse as sp

    from vasp_model.recommenders.blend import EaseBlend

    rng = np.random.default_rng(seed)
    if neighbours:
        k = min(neighbours, n_items - 1)
        targets = (np.arange(n_items)[:, None] + rng.integers(1, n_items, (n_items, k))) % n_items  # never itself
        values = rng.standard_normal(targets.size, dtype=np.float32) * 0.01
        B = sp.csr_matrix((values, targets.ravel(), np.arange(0, targets.size + 1, k)), shape=(n_items, n_items))
        B.sum_duplicates()
    else:
        B = rng.standard_normal((n_items, n_items), dtype=np.float32) * np.float32(0.01)
        np.fill_diagonal(B, 0.0)
    return EaseBlend(weight, B)


def make_floor_bundle(item_ids, popularity, directory: str):
    """The same vocabulary behind the cheapest model that still scores every item (items -> 1 -> items
    Dense): scoring it times everything of the job but the model's matmuls."""
    import keras

    from vasp_model.recommenders.bundle import ModelBundle

    n = len(item_ids)
    model = keras.Sequential([keras.Input((n,)), keras.layers.Dense(1), keras.layers.Dense(n)], name="floor")
    bundle = ModelBundle(model, item_ids, popularity, metadata={"preset": "floor", "untrained": True})
    bundle.save(directory)
    return bundle


def user_lists(warehouse: str, date: str, max_users: int | None = None):
    """Every user's (user_id, positives' item ids, consumed item ids) as the scoring job's tasks receive
    them under the default exclusion rule: three Arrow arrays, the third None where the job reads the
    positives alone (``jobs.score.exclusion_source``); only users with ``user_idx < max_users`` when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vasp_jobs.score import exclusion_source
    from vasp_model.core import defaults
    from vasp_model.data import layout
    from vasp_model.data.features import read_manifest

    only = None if max_users is None else [("user_idx", "<", max_users)]
    users = pq.read_table(
        layout.feature_table(warehouse, date, "users"), columns=["user_idx", "user_id"], filters=only
    ).to_pandas()

    def lists(table: str):
        rows = pq.read_table(
            layout.feature_table(warehouse, date, table), columns=["user_idx", "item_id"], filters=only
        )
        grouped = rows.to_pandas().groupby("user_idx")["item_id"].apply(list)
        return pa.array([grouped.get(u, []) for u in users.user_idx], type=pa.list_(pa.string()))

    excluded = exclusion_source(defaults.DEFAULT_EXCLUDE, read_manifest(layout.features_dir(warehouse, date)))
    return (
        pa.array(users.user_id, type=pa.string()),
        lists("interactions"),
        None if excluded == "interactions" else lists(excluded),
    )


def single_process(bundle, lists, n: int = 100, batch: int | None = None) -> float:
    """The scoring job's per-batch work (``jobs.score.score_lists``) in one process, without Spark."""
    from vasp_jobs.score import score_lists
    from vasp_model.core.defaults import SCORE_BATCH_USERS

    batch = batch or SCORE_BATCH_USERS
    t0 = time.perf_counter()
    for start in range(0, len(lists[0]), batch):
        score_lists(bundle, *(column if column is None else column.slice(start, batch) for column in lists), n)
    return time.perf_counter() - t0


def spark_score(spark, warehouse: str, date: str, bundle_dir: str, reps: int, warmup: int, top_n: int = 100):
    """(cold run s, warm-up run s, timed run s, manifest) of the scoring job."""
    from vasp_jobs.score import score

    def run():
        return _timed(lambda: score(spark, date, warehouse, model_uri=bundle_dir, top_n=top_n))

    cold, manifest = run()
    warming = [run()[0] for _ in range(max(0, warmup - 1))]
    return cold, warming, [run()[0] for _ in range(reps)], manifest


def als(spark, warehouse: str, date: str, reps: int, warmup: int, rank: int = 64, top_n: int = 100):
    """(users, fit s, recommendForAllUsers run s) for Spark ALS, timed like the scoring job."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from vasp_jobs.common.spark import spark_path
    from vasp_model.data import layout

    inter = (
        spark.read.parquet(spark_path(layout.feature_table(warehouse, date, "interactions")))
        .where(F.col("item_idx").isNotNull())
        .select("user_idx", "item_idx", F.lit(1.0).alias("rating"))
        .cache()
    )
    n_users = inter.select("user_idx").distinct().count()
    model_als = ALS(
        rank=rank,
        maxIter=10,
        regParam=0.01,
        implicitPrefs=True,
        userCol="user_idx",
        itemCol="item_idx",
        ratingCol="rating",
        checkpointInterval=2,
        seed=0,
    )
    fit_s, fitted = _timed(lambda: model_als.fit(inter))

    def recommend():
        return _timed(lambda: fitted.recommendForAllUsers(top_n).write.format("noop").mode("overwrite").save())[0]

    rec_times = _repeat(recommend, reps, warmup)
    inter.unpersist()
    return n_users, fit_s, rec_times


def synthetic_population(warehouse: str, date: str, n_users: int, n_items: int, seed: int = 0) -> int:
    """Publish features/dt=D with only ``users``, ``interactions`` and ``consumed`` (all the scoring job
    reads; every interaction is a positive here, so ``consumed`` = ``interactions``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vasp_model.data import layout, storage

    final = layout.features_dir(warehouse, date)
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(mean=np.log(45), sigma=0.9, size=n_users).astype(np.int64), 1, n_items // 4)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    weights /= weights.sum()
    items = rng.choice(n_items, size=int(counts.sum()), p=weights).astype(np.int32)
    users = np.repeat(np.arange(n_users, dtype=np.int32), counts)
    staging = storage.staging_dir(final)
    base = storage.local_path(staging)
    os.makedirs(f"{base}/users")
    pq.write_table(
        pa.table(
            {
                "user_idx": pa.array(np.arange(n_users, dtype=np.int32)),
                "user_id": pa.array(np.char.add("u", np.arange(n_users).astype(str))),
                "split": pa.array(np.full(n_users, "excluded")),
            }
        ),
        f"{base}/users/part-0.parquet",
    )
    interactions = pa.table(
        {
            "user_idx": pa.array(users),
            "item_id": pa.array(np.char.add("m", items.astype(str))),
            "item_idx": pa.array(items),
        }
    )
    for table in ("interactions", "consumed"):
        os.makedirs(f"{base}/{table}")
        pq.write_table(interactions, f"{base}/{table}/part-0.parquet")
    digest = hashlib.sha256(users.tobytes() + items.tobytes()).hexdigest()  # the input: these events
    manifest = {"schema_version": layout.SCHEMA_VERSION, "synthetic": True, "users": n_users, "items": n_items}
    manifest["counts"] = {"interactions": interactions.num_rows, "consumed": interactions.num_rows}  # as a build counts
    manifest["input"] = {"uri": f"synthetic://20m-shaped?users={n_users}&items={n_items}&seed={seed}", "sha256": digest}
    storage.publish(staging, final, manifest)
    return int(counts.sum())


def bench_ml1m(spark, args, workdir: Path) -> dict:
    """Section 2: ML-1M through the job, in one process, with the floor model, and through ALS."""
    from vasp_model.data.features import load_features
    from vasp_model.recommenders.bundle import ModelBundle

    warehouse = str(workdir / "warehouse")
    build_ml1m(spark, warehouse)
    features = load_features(warehouse, DATE)
    bundle_dir = str(workdir / "ml1m-bundle")
    make_bundle(features.item_ids, features.popularity, bundle_dir, features, args.train_epochs)
    bundle = ModelBundle.load(bundle_dir)  # as the job's workers load it (Neural EASE on the host)
    lists = user_lists(warehouse, DATE)
    n_users = len(lists[0])
    print(f"ML-1M: {n_users} users, {bundle.n_items} items, cpu-preset model, {bundle.model.count_params():,} params")

    cold, warming, times, manifest = spark_score(spark, warehouse, DATE, bundle_dir, args.reps, args.warmup)
    spark_s = statistics.median(times)
    assert manifest["counts"]["users"] == n_users
    single_times = _repeat(lambda: single_process(bundle, lists), args.reps, args.warmup)
    single_s = statistics.median(single_times)
    result = {
        "users": n_users,
        "items": bundle.n_items,
        "weights": "trained" if args.train_epochs else "untrained",
        "spark_cold_s": round(cold, 2),
        "spark_warmup_s": [round(t, 2) for t in warming],
        "spark_s": [round(t, 2) for t in times],
        "spark_users_per_s": round(n_users / spark_s, 1),
        "single_process_s": [round(t, 2) for t in single_times],
        "single_process_users_per_s": round(n_users / single_s, 1),
        "single_over_spark": round(spark_s / single_s, 2),
    }
    floor_dir = str(workdir / "ml1m-floor-bundle")
    make_floor_bundle(features.item_ids, features.popularity, floor_dir)
    floor = ModelBundle.load(floor_dir)
    _, _, floor_times, _ = spark_score(spark, warehouse, DATE, floor_dir, args.reps, args.warmup)
    floor_single = _repeat(lambda: single_process(floor, lists), args.reps, args.warmup)
    floor_s = statistics.median(floor_times)
    result.update(
        {
            "floor_spark_s": [round(t, 2) for t in floor_times],
            "floor_spark_users_per_s": round(n_users / floor_s, 1),
            "floor_single_process_s": [round(t, 2) for t in floor_single],
            "model_spark_s": round(spark_s - floor_s, 2),
            "model_single_process_s": round(single_s - statistics.median(floor_single), 2),
        }
    )
    if not args.skip_als:
        als_users, fit_s, rec_times = als(spark, warehouse, DATE, args.reps, args.warmup)
        rec_s = statistics.median(rec_times)
        result.update(
            {
                "als_fit_s": round(fit_s, 2),
                "als_recommend_s": [round(t, 2) for t in rec_times],
                "als_users_per_s": round(als_users / rec_s, 1),
                "spark_over_als": round((n_users / spark_s) / (als_users / rec_s), 1),
                "floor_over_als": round((n_users / floor_s) / (als_users / rec_s), 1),
            }
        )
    print(json.dumps(result, indent=2))
    return result


def compute_floor(n_items: int, n_users: int, nnz: float, neighbours: int = 0, blend: bool = False) -> dict:
    """The compute floor of scoring ``n_users`` of ``nnz`` positives on average: one forward pass of
    the cpu preset's matmuls per user (``neighbours``: its pruned kernel; ``blend``: plus EASE's ``x B``,
    pruned alike), sparse input as scoring feeds it, at this machine's matmul rate measured now
    (``bench/train.py``'s peak)."""
    from bench.train import matmul_peak
    from vasp_model.nn.model import flops_per_row

    peak = matmul_peak()["peak_gflops"]
    model_config = cpu_model_config(neighbours)
    per_row = flops_per_row(n_items, model_config, nnz)
    if blend:  # x B over the row's items, B pruned as the Neural EASE kernel is
        k = model_config.neighbours_for(n_items)
        per_row += 2 * nnz * (n_items if k is None else k)
    flops = per_row * n_users
    return {
        "forward_tflop": round(flops / 1e12, 1),
        "matmul_gflops": round(peak, 1),
        "floor_s": float(f"{flops / peak / 1e9:.4g}"),  # significant digits: a tiny population's floor is not 0
    }


def bench_synthetic(spark, args, workdir: Path) -> dict:
    """Section 3: the MovieLens-20M-shaped population through the job, and in one process."""
    import keras

    from vasp_jobs.common.spark import get_session, spark_config
    from vasp_jobs.score import score
    from vasp_model.core.defaults import SCORE_BATCH_USERS
    from vasp_model.recommenders.bundle import ModelBundle

    warehouse = str(workdir / "warehouse")
    n_all = args.synthetic_users
    n_run = n_all if args.synthetic_sample <= 0 else min(args.synthetic_sample, n_all)
    items_ids = np.asarray([f"m{i}" for i in range(args.synthetic_items)], dtype=object)
    pop = np.arange(args.synthetic_items, 0, -1, dtype=np.int64)
    syn_dir = str(workdir / "syn20m-bundle")
    syn_bundle = make_bundle(
        items_ids, pop, syn_dir, neighbours=args.synthetic_neighbours, blend=args.synthetic_blend
    )  # saved; freed here
    syn_params = int(syn_bundle.model.count_params())
    del syn_bundle
    keras.backend.clear_session()  # the driver does not keep the 20k x 20k model (the workers load it)
    gc.collect()
    if args.synthetic_task_cpus > 1:  # a session whose tasks take N cores each: fewer model copies
        spark.stop()
        spark = get_session(
            spark_config(
                {
                    "spark_master": args.master,
                    "spark_shuffle_partitions": 8,
                    "spark_conf": (f"spark.task.cpus={args.synthetic_task_cpus}",),
                }
            )
        )
    gen_s, rows = _timed(lambda: synthetic_population(warehouse, "2026-01-02", n_run, args.synthetic_items))
    print(f"synthetic: {n_run} users, {rows:,} positive events ({gen_s:.1f}s)")
    with PeakTreeRSS() as rss:
        seconds, manifest = _timed(lambda: score(spark, "2026-01-02", warehouse, model_uri=syn_dir, top_n=100))
    warm = [  # the same session again: its Python worker is up and holds the model
        _timed(lambda: score(spark, "2026-01-02", warehouse, model_uri=syn_dir, top_n=100))[0]
        for _ in range(args.synthetic_warm_runs)
    ]
    rate = n_run / seconds
    floor = compute_floor(
        args.synthetic_items, n_all, rows / n_run, args.synthetic_neighbours, args.synthetic_blend > 0
    )
    result = {
        "users_scored": n_run,
        "items": args.synthetic_items,
        "neural_ease": f"pruned to {args.synthetic_neighbours}" if args.synthetic_neighbours else "dense",
        "ease_blend_weight": args.synthetic_blend,
        "params": syn_params,
        "peak_rss_gib_driver_jvm_workers": round(rss.peak / 2**30, 2),
        "task_cpus": args.synthetic_task_cpus,
        "weights": "untrained",
        "spark_s": round(seconds, 1),
        "users_per_s": round(rate, 1),
        "rows": manifest["counts"]["rows"],
        f"time_for_{n_all}_users_s": round(n_all / rate, 1),
        "extrapolated": n_run < n_all,
        **floor,
        "spark_over_floor": round(n_all / rate / floor["floor_s"], 2),
    }
    if warm:
        warm_s = statistics.median(warm)
        result |= {
            "spark_warm_s": round(warm_s, 1),
            "spark_warm_over_floor": round(n_all / (n_run / warm_s) / floor["floor_s"], 2),
            "cold_start_s": round(seconds - warm_s, 1),
        }
    if not args.skip_als:  # the same population through Spark ALS, one recommendForAllUsers run
        _, als_fit_s, (als_rec_s,) = als(spark, warehouse, "2026-01-02", reps=1, warmup=0)
        result |= {
            "als_fit_s": round(als_fit_s, 1),
            "als_recommend_s": round(als_rec_s, 1),
            "als_recommend_over_spark": round(als_rec_s / seconds, 2),
        }
    if args.synthetic_single_users > 0:
        lists = user_lists(warehouse, "2026-01-02", args.synthetic_single_users)
        syn = ModelBundle.load(syn_dir)
        # warm-up: one batch
        single_process(syn, [column if column is None else column.slice(0, SCORE_BATCH_USERS) for column in lists])
        single_s = single_process(syn, lists)
        single_rate = len(lists[0]) / single_s
        result.update(
            {
                "single_process_users": len(lists[0]),
                "single_process_users_per_s": round(single_rate, 1),
                "single_over_spark": round(single_rate / rate, 2),
                "single_over_floor": round(n_all / single_rate / floor["floor_s"], 2),
            }
        )
    print(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "run" / "bench-score"), help="Cache of built features/models.")
    parser.add_argument("--reps", type=int, default=5, help="Timed runs of each way of scoring (median).")
    parser.add_argument("--warmup", type=int, default=10, help="Untimed runs before them (the first is the cold one).")
    parser.add_argument("--train-epochs", type=int, default=0, help="Train the ML-1M model first (0 = untrained).")
    parser.add_argument("--skip-als", action="store_true", help="Do not run Spark ALS.")
    parser.add_argument("--skip-ml1m", action="store_true", help="Only time the 20M-shaped population.")
    parser.add_argument("--skip-synthetic", action="store_true", help="Do not time the 20M-shaped population.")
    parser.add_argument("--synthetic-users", type=int, default=138_493, help="Users of the 20M-shaped population.")
    parser.add_argument("--synthetic-items", type=int, default=20_000, help="Items of the 20M-shaped population.")
    parser.add_argument(
        "--synthetic-neighbours",
        type=int,
        default=0,
        help="Prune the population's model's Neural EASE kernel to K targets per item (0 = dense, the default).",
    )
    parser.add_argument(
        "--synthetic-blend",
        type=float,
        default=0.1,
        help="Blend the population's model with an EASE of this weight, the served path whenever validation chose "
        "a blend (0 = VASP alone).",
    )
    parser.add_argument(
        "--synthetic-sample",
        type=int,
        default=0,
        help="Users actually scored (0 = all, the default; else extrapolated).",
    )
    parser.add_argument(
        "--synthetic-task-cpus",
        type=int,
        default=2,
        help="spark.task.cpus for the 20M-shaped population (default 2: one worker holds the 1.6 GB kernel).",
    )
    parser.add_argument(
        "--synthetic-warm-runs",
        type=int,
        default=1,
        help="Runs of the job again in the same session, its worker up and holding the model (median; 0 = none).",
    )
    parser.add_argument(
        "--synthetic-single-users",
        type=int,
        default=20_000,
        help="Users of the 20M-shaped population also scored in one process, the bound (0 = skip).",
    )
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2]).")
    args = parser.parse_args(argv)
    if not ML1M.exists():
        print(f"ML-1M not found at {ML1M}", file=sys.stderr)
        return 1
    from vasp_model.core.defaults import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow as `vasp score` runs it
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("VASP_HOME", args.workdir)

    from vasp_jobs.common.spark import get_session, spark_config

    workdir = Path(args.workdir)
    spark = get_session(spark_config({"spark_master": args.master, "spark_shuffle_partitions": 8}))
    cores = spark.sparkContext.defaultParallelism
    out: dict = {"master": args.master, "cores": cores, "cpu_count": os.cpu_count()}

    if not args.skip_ml1m:
        out["ml1m"] = bench_ml1m(spark, args, workdir)
        gc.collect()  # the 20M-shaped model needs the memory
    if not args.skip_synthetic:
        out["synthetic_20m"] = bench_synthetic(spark, args, workdir)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
