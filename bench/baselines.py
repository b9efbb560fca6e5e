"""Baseline figures (EASE with λ tuned on validation, popularity) on the real data sets that exist.

For each data set found under ``--data`` (default ``../shared/data`` beside the checkout) this
builds ``features/dt=D`` with the Spark job (``vasp build``, skipped when that date is already
published in ``--warehouse``), then scores closed-form EASE and popularity on the test users
with the vae_cf protocol (Liang et al. 2018) and prints one table.

    .venv/bin/python bench/baselines.py                      # every data set present
    .venv/bin/python bench/baselines.py --datasets ml-100k   # just one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, REPO)

# name -> (path under the data root, extra `vasp build` arguments)
DATASETS = {
    "ml-100k": ("ml-100k/u.data", []),
    "ml-1m": ("ml-1m/ratings.csv", []),
    "lastfm": ("hetrec2011-lastfm-2k/user_artists.dat", []),
    "citeulike-a": ("citeulike-a/users.dat", []),
}
COLUMNS = ("ndcg@100", "recall@20", "recall@50", "coverage@100", "recall@20_head", "recall@20_mid", "recall@20_tail")


def build(input_path: str, warehouse: str, date: str, extra: list[str]) -> None:
    from bench.quality import vasp_command
    from vasp_model.data import layout, storage

    if storage.is_published(layout.features_dir(warehouse, date)):
        return
    cmd = vasp_command("build", "--input", input_path, "--warehouse", warehouse, "--date", date, *extra)
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default=os.path.join(REPO, "..", "shared", "data"), help="Root of the shared data sets."
    )
    parser.add_argument(
        "--warehouse", default="/tmp/vasp_bench_baselines", help="Warehouse root (one sub-folder per data set)."
    )
    parser.add_argument("--date", default="2026-01-01", help="Logical date of the built features.")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), help="Data sets to run (default: all).")
    parser.add_argument(
        "--grid", default="100,300,1000,3000", help="Comma-separated EASE λ grid (chosen on validation nDCG@100)."
    )
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)

    from vasp_model.data.features import load_features
    from vasp_model.recommenders.baselines import baseline_metrics

    grid = tuple(float(x) for x in args.grid.split(",") if x.strip())
    results = {}
    for name in args.datasets:
        if name not in DATASETS:
            parser.error(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
        rel, extra = DATASETS[name]
        path = os.path.join(args.data, rel)
        if not os.path.exists(path):
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        warehouse = os.path.join(args.warehouse, name)
        build(path, warehouse, args.date, extra)
        start = time.perf_counter()
        features = load_features(warehouse, args.date)
        load_s = time.perf_counter() - start
        got = baseline_metrics(features, grid=grid)
        got["shape"] = {
            "train_users": features.train.shape[0],
            "items": features.n_items,
            "validation_users": features.validation.n_users,
            "test_users": features.test.n_users,
            "load_seconds": round(load_s, 2),
        }
        results[name] = got
        print(f"done {name}: {json.dumps(got['shape'])}", file=sys.stderr, flush=True)

    header = f"{'data set':<12} {'model':<11} {'λ':>6} {'users':>5} " + " ".join(f"{c:>14}" for c in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, got in results.items():
        for model in ("ease", "popularity"):
            m = got[model]
            lam = f"{m['lambda']:g}" if "lambda" in m else "-"
            print(f"{name:<12} {model:<11} {lam:>6} {m['users']:>5} " + " ".join(f"{m[c]:>14.4f}" for c in COLUMNS))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
