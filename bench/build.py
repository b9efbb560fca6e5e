"""Benchmark of the Spark build job against the reference (single-process pandas) preprocessing.

Input: a synthetic data set shaped like MovieLens-20M (138,493 users, 26,744 items, 20M rows,
CSV like ``ratings.csv``), generated once by ``jobs.synth`` and cached under ``bench/out/``.

1. Spark: ``jobs.build_matrices.build`` end to end on ``local[2]`` (read CSV, quarantine check,
   dedupe, binarize, user splits, vocabulary, fold-in/holdout, K=8 A/B copies, Parquet writes,
   atomic publish). Session start-up is reported separately.
2. pandas: the same transformation done the way ``dawenl/vae_cf``'s notebook does it in one
   process: read the CSV, keep ratings > 3.5, count, drop users with < 5, permute users into
   train/validation/test, vocabulary from train users, ``split_train_test_proportion`` (its
   per-user loop), numerize with dict maps, plus the A/B copies (per copy: random key, sort,
   halves) and Parquet writes of the same tables.

Prints both wall times and their ratio (median over ``--runs``; at 20M rows one run each is
what fits, and the output says so), plus the machine's load average: the machine is shared,
so figures taken while others use its 2 cores are slower than on an idle machine.

    .venv/bin/python bench/build.py               # full size (20M rows)
    .venv/bin/python bench/build.py --rows 2000000  # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

ML20M_USERS, ML20M_ITEMS, ML20M_ROWS = 138_493, 26_744, 20_000_000


def make_input(rows: int, out_dir: str, seed: int) -> str:
    from vasp_jobs.synth import SynthConfig, generate

    scale = rows / ML20M_ROWS
    users = max(100, round(ML20M_USERS * scale))
    items = max(500, min(ML20M_ITEMS, round(ML20M_ITEMS * scale**0.5)))
    config = SynthConfig(users=users, items=items, interactions=rows, seed=seed)
    path = os.path.join(out_dir, f"{config.tag()}.csv")
    if not os.path.exists(path):
        started = time.perf_counter()
        summary = generate(config, path)
        print(f"generated {summary['rows']:,} rows in {time.perf_counter() - started:.1f}s -> {path}", flush=True)
    return path


def split_train_test_proportion(data, test_prop=0.2, seed=98765):
    """``dawenl/vae_cf``'s per-user loop, verbatim in spirit."""
    import numpy as np
    import pandas as pd

    grouped = data.groupby("uid")
    tr_list, te_list = [], []
    rng = np.random.RandomState(seed)
    for _, group in grouped:
        n_items_u = len(group)
        if n_items_u >= 5:
            idx = np.zeros(n_items_u, dtype="bool")
            idx[rng.choice(n_items_u, size=int(test_prop * n_items_u), replace=False).astype("int64")] = True
            tr_list.append(group[np.logical_not(idx)])
            te_list.append(group[idx])
        else:
            tr_list.append(group)
    return pd.concat(tr_list), (pd.concat(te_list) if te_list else data.iloc[:0])


def pandas_reference(path: str, out_dir: str, ab_copies: int = 8, seed: int = 98765) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    raw = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "rating": float, "timestamp": "int64"})
    raw = raw.drop_duplicates(["user_id", "item_id"])
    raw = raw[raw["rating"] > 3.5]
    usercount = raw.groupby("user_id").size()
    raw = raw[raw["user_id"].isin(usercount.index[usercount >= 5])]
    unique_uid = np.asarray(sorted(raw["user_id"].unique()))
    rng = np.random.RandomState(seed)
    unique_uid = unique_uid[rng.permutation(unique_uid.size)]
    n_users = unique_uid.size
    n_heldout = min(10_000, int(0.1 * n_users))
    tr_users = unique_uid[: n_users - 2 * n_heldout]
    vd_users = unique_uid[n_users - 2 * n_heldout : n_users - n_heldout]
    te_users = unique_uid[n_users - n_heldout :]
    train_plays = raw[raw["user_id"].isin(tr_users)]
    popularity = train_plays.groupby("item_id").size().sort_values(ascending=False, kind="stable")
    show2id = {sid: i for i, sid in enumerate(popularity.index)}
    profile2id = {pid: i for i, pid in enumerate(unique_uid)}

    def numerize(frame):
        return pd.DataFrame(
            {
                "uid": frame["user_id"].map(profile2id).astype("int32"),
                "sid": frame["item_id"].map(show2id).astype("int32"),
            }
        )

    tables = {
        "items": pd.DataFrame({"item_idx": np.arange(len(show2id), dtype="int32"), "item_id": popularity.index}),
        "users": pd.DataFrame({"user_idx": np.arange(n_users, dtype="int32"), "user_id": unique_uid}),
    }
    for name, users in (("validation", vd_users), ("test", te_users)):
        plays = raw[raw["user_id"].isin(users) & raw["item_id"].isin(show2id)]
        fold_in, holdout = split_train_test_proportion(numerize(plays))
        tables[name] = pd.concat([fold_in.assign(role="fold_in"), holdout.assign(role="holdout")])
    train = numerize(train_plays)
    sizes = train.groupby("uid")["sid"].transform("size").to_numpy()
    copies = []
    for copy in range(ab_copies):
        key = rng.random_sample(len(train))
        order = np.lexsort((key, train["uid"].to_numpy()))
        shuffled = train.iloc[order]
        rank = shuffled.groupby("uid").cumcount().to_numpy()
        half = np.where(rank < sizes[order] // 2, "A", "B")
        copies.append(
            pd.DataFrame(
                {
                    "uid": shuffled["uid"].to_numpy(),
                    "copy": np.int32(copy),
                    "half": half,
                    "sid": shuffled["sid"].to_numpy(),
                }
            )
        )
    tables["train_ab"] = pd.concat(copies, ignore_index=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    for name, frame in tables.items():
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), os.path.join(out_dir, f"{name}.parquet"))
    return {
        "seconds": time.perf_counter() - started,
        "positives_kept": int(len(raw)),
        "items": len(show2id),
        "train_ab_rows": int(len(tables["train_ab"])),
    }


def spark_build(spark, path: str, warehouse: str) -> dict:
    from vasp_jobs.build_matrices import BuildConfig, build

    started = time.perf_counter()
    manifest = build(spark, path, warehouse, "2024-01-01", BuildConfig())
    return {"seconds": time.perf_counter() - started, "manifest": manifest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ML20M_ROWS, help="Input rows (default 20M, ML-20M shape).")
    parser.add_argument("--runs", type=int, default=1, help="Runs of each side; the median is reported (1).")
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2]).")
    parser.add_argument("--driver-memory", default="6g", help="Spark driver memory (6g).")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="Work directory (bench/out).")
    parser.add_argument("--skip-pandas", action="store_true", help="Time only the Spark job.")
    parser.add_argument("--seed", type=int, default=20, help="Seed of the synthetic input.")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("VASP_HOME", os.path.join(args.out, "run"))
    path = make_input(args.rows, args.out, args.seed)
    print(f"input {path} ({os.path.getsize(path) / 2**20:.0f} MiB); load average {os.getloadavg()}", flush=True)

    from vasp_jobs.common.spark import get_session, spark_config

    started = time.perf_counter()
    spark = get_session(spark_config({"spark_master": args.master, "spark_driver_memory": args.driver_memory}, env={}))
    session_s = time.perf_counter() - started
    spark_runs, pandas_runs = [], []
    manifest: dict = {}
    for run in range(args.runs):
        warehouse = os.path.join(args.out, "warehouse")
        shutil.rmtree(warehouse, ignore_errors=True)
        result = spark_build(spark, path, warehouse)
        manifest = result["manifest"]
        spark_runs.append(result["seconds"])
        print(f"spark run {run + 1}: {result['seconds']:.1f}s  phases {json.dumps(manifest['timings'])}", flush=True)
    spark.stop()
    reference: dict = {}
    if not args.skip_pandas:
        for run in range(args.runs):
            reference = pandas_reference(path, os.path.join(args.out, "pandas"))
            pandas_runs.append(reference["seconds"])
            print(f"pandas run {run + 1}: {reference['seconds']:.1f}s", flush=True)
    counts = manifest["counts"]
    spark_s = statistics.median(spark_runs)
    summary = {
        "rows": counts["input_rows"],
        "users": counts["users"],
        "items": counts["items"],
        "positives_kept": counts["positives_kept"],
        "train_ab_rows": counts["train_ab_rows"],
        "master": args.master,
        "runs": args.runs,
        "spark_session_start_s": round(session_s, 1),
        "spark_build_s": round(spark_s, 1),
        "load_average_end": os.getloadavg(),
    }
    if pandas_runs:
        pandas_s = statistics.median(pandas_runs)
        summary.update(
            {
                "pandas_s": round(pandas_s, 1),
                "pandas_over_spark": round(pandas_s / spark_s, 2),
                "pandas_positives_kept": reference["positives_kept"],
                "pandas_train_ab_rows": reference["train_ab_rows"],
            }
        )
    note = f"median of {args.runs} runs" if args.runs > 1 else "1 run each (a 20M-row run is minutes; use --runs N)"
    print(f"\nSpark build ({args.master}): {spark_s:.1f}s (+{session_s:.1f}s session start)  [{note}]")
    if pandas_runs:
        print(
            f"pandas reference (1 process): {summary['pandas_s']:.1f}s  ratio pandas/spark = "
            f"{summary['pandas_over_spark']:.2f}x"
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
