"""Warm start vs cold start on consecutive nights of one timeline (ML-100K by timestamp).

    python bench/warm_start.py --data ../shared/data/ml-100k/u.data [--night1 1998-03-31] [--gap-days 1]
        [--fractions 0.25,0.5,1] [--preset cpu] [--workdir DIR]

The README's figures: ``--night1 1998-03-31 --gap-days 1`` and ``--night1 1998-03-24 --gap-days 7
--fractions 0.25,0.5``.

Night k holds every event before the end of its day (UTC); night 2 is ``--gap-days`` after night 1.
Both nights are built by the build job (Spark, local[2]) with a fixed number of held-out users, so
the seeded hash split is stable: a user held out on night 2 was never a night-1 training user (the
script checks it; a warm start must not have seen night 2's test users). Then, in this process:
night 1 trained cold (the "champion"); night 2 trained cold (full schedule) and warm from night 1
(for each warm_epochs fraction: that share of every phase, no Neural EASE warm-up). Printed: per
run, the epochs and seconds to reach the cold run's best validation nDCG@100 (setup + epochs),
the whole fit's seconds, the final test nDCG@100 (the served model: with the blend validation
chose), and warm/cold ratios with the paired-bootstrap interval of warm − cold on the test users.
The input is read in place; the nights' CSVs and warehouse go to ``--workdir`` (default: a temp dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ML100K = os.path.join(ROOT, "..", "shared", "data", "ml-100k", "u.data")


def write_nights(data: str, night1: str, gap_days: int, workdir: str) -> list[tuple[str, str]]:
    """CSV (user_id, item_id, rating) of every event before the end of each night's day: [(date, path)]."""
    import pandas as pd

    events = pd.read_csv(data, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    first = dt.date.fromisoformat(night1)
    nights = []
    for day in (first, first + dt.timedelta(days=gap_days)):
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC).timestamp()
        path = os.path.join(workdir, f"events-{day}.csv")
        events[events.timestamp < end][["user_id", "item_id", "rating"]].to_csv(path, index=False)
        nights.append((day.isoformat(), path))
    return nights


def build_nights(nights: list[tuple[str, str]], warehouse: str, heldout_users: int) -> None:
    from vasp_jobs.build_matrices import BuildConfig, build
    from vasp_jobs.common.spark import get_session, spark_config
    from vasp_model.data import layout, storage

    todo = [(d, p) for d, p in nights if not storage.is_published(layout.features_dir(warehouse, d))]
    if not todo:
        return
    spark = get_session(spark_config({"spark_master": "local[2]", "spark_driver_memory": "2g"}, env={}))
    try:
        for date, path in todo:
            build(spark, path, warehouse, date, BuildConfig(heldout_users=heldout_users))
    finally:
        spark.stop()


def check_no_leak(night1, night2) -> int:
    """Night-2 held-out users who were night-1 training users (must be 0 for a fair comparison)."""
    trained = set(map(str, night1.train_user_ids))
    held = set(map(str, night2.test.user_ids)) | set(map(str, night2.validation.user_ids))
    return len(trained & held)


def reached(history: list[dict], setup: float, target: float) -> tuple[int | None, float | None]:
    """The first epoch whose validation nDCG@100 reaches ``target`` and the seconds until then (None, None)."""
    elapsed = setup
    for row in history:
        elapsed += row["train_seconds"] + row["validation_seconds"]
        if row["val_ndcg@100"] >= target - 1e-12:
            return row["epoch"], elapsed
    return None, None


def summarize(result, target: float) -> dict:
    """Epochs and seconds to reach ``target`` validation nDCG@100 (and 99% of it), the fit's seconds (setup:
    closed-form init, Neural EASE warm-up, weight transfer; then every epoch with its validation), the test
    nDCG@100 and the validation curve."""
    t = result.timings
    setup = sum(t.get(k, 0.0) for k in ("ease_init_seconds", "ease_warmup_seconds", "warm_start_seconds"))
    epochs, seconds = reached(result.history, setup, target)
    epochs_99, seconds_99 = reached(result.history, setup, 0.99 * target)
    fit = setup + sum(r["train_seconds"] + r["validation_seconds"] for r in result.history)
    return {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_ndcg@100": max(r["val_ndcg@100"] for r in result.history),
        "epochs_to_target": epochs,
        "seconds_to_target": seconds,
        "epochs_to_99pct": epochs_99,
        "seconds_to_99pct": seconds_99,
        "setup_seconds": setup,
        "fit_seconds": fit,
        "val_ndcg@100_by_epoch": [round(r["val_ndcg@100"], 4) for r in result.history],
        "test_ndcg@100": result.metrics["test"]["vasp"]["ndcg@100"],
        "warm_start": result.metrics.get("warm_start"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=ML100K, help="MovieLens u.data (user item rating timestamp).")
    parser.add_argument("--night1", default="1998-03-31", help="Day of night 1 (its events: before the day ends).")
    parser.add_argument("--gap-days", type=int, default=1, help="Days from night 1 to night 2.")
    parser.add_argument("--fractions", default="0.25,0.5,1", help="warm_epochs values to measure.")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--heldout-users", type=int, default=90, help="Validation and test users per night.")
    parser.add_argument("--backend", default="jax", help="Keras backend (jax: ~3x faster per epoch on CPU).")
    parser.add_argument("--workdir", default=None, help="Where the nights' CSVs and warehouse go (default: temp).")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", args.backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = args.workdir or tempfile.mkdtemp(prefix="vasp-warm-bench-")
    os.makedirs(workdir, exist_ok=True)
    warehouse = os.path.join(workdir, "warehouse")

    nights = write_nights(args.data, args.night1, args.gap_days, workdir)
    build_nights(nights, warehouse, args.heldout_users)

    from vasp_model.core.config import make_config
    from vasp_model.data.features import load_features
    from vasp_model.evaluation.bootstrap import paired_bootstrap
    from vasp_model.train.trainer import train
    from vasp_model.train.warm_start import WarmStartSource

    (day1, _), (day2, _) = nights
    f1, f2 = load_features(warehouse, day1), load_features(warehouse, day2)
    leaks = check_no_leak(f1, f2)
    if leaks:
        raise SystemExit(f"{leaks} night-2 held-out users were night-1 training users: the comparison would leak")
    config = make_config(args.preset)
    quiet = {"verbose": 0, "evaluate_baselines": False}

    champion = train(f1, config, evaluate=False, **quiet)
    source = WarmStartSource(champion.bundle.model, champion.bundle.item_ids, f"night {day1}")
    cold = train(f2, config, **quiet)
    target = max(r["val_ndcg@100"] for r in cold.history)
    runs = {"cold": (cold, summarize(cold, target))}
    for fraction in (float(f) for f in args.fractions.split(",")):
        warm_config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, warm_epochs=fraction).warm_schedule()
        )
        result = train(f2, warm_config, init_from=source, **quiet)
        runs[f"warm {fraction:g}"] = (result, summarize(result, target))

    c = runs["cold"][1]
    report = {
        "nights": {
            day: {"items": f.n_items, "train_users": int(f.train.shape[0]), "test_users": f.test.n_users}
            for day, f in ((day1, f1), (day2, f2))
        },
        "preset": args.preset,
        "backend": os.environ["KERAS_BACKEND"],
        "target_val_ndcg@100": target,
        "runs": {},
    }
    for name, (result, s) in runs.items():
        row = dict(s)
        if name != "cold":
            diff = paired_bootstrap(result.per_user["test"]["vasp"], cold.per_user["test"]["vasp"])["ndcg@100"]
            row["test_ndcg@100_warm_minus_cold"] = {"diff": diff.diff, "low": diff.low, "high": diff.high}
            row["ratio_seconds_to_target"] = (
                None if s["seconds_to_target"] is None else s["seconds_to_target"] / c["seconds_to_target"]
            )
            row["ratio_seconds_to_99pct"] = (
                None if s["seconds_to_99pct"] is None else s["seconds_to_99pct"] / c["seconds_to_99pct"]
            )
            row["ratio_fit_seconds"] = s["fit_seconds"] / c["fit_seconds"]
        report["runs"][name] = row
        print(
            f"{name:>9}: epochs {s['epochs_run']:>2}  to target: "
            f"{s['epochs_to_target'] if s['epochs_to_target'] is not None else '-':>2} ep "
            f"{s['seconds_to_target'] or float('nan'):6.1f}s  to 99%: {s['epochs_to_99pct'] or '-':>2} ep "
            f"{s['seconds_to_99pct'] or float('nan'):6.1f}s  fit {s['fit_seconds']:6.1f}s  "
            f"best val {s['best_val_ndcg@100']:.4f}  test {s['test_ndcg@100']:.4f}"
            + (
                f"  warm-cold {row['test_ndcg@100_warm_minus_cold']['diff']:+.4f} "
                f"[{row['test_ndcg@100_warm_minus_cold']['low']:+.4f}, "
                f"{row['test_ndcg@100_warm_minus_cold']['high']:+.4f}]  fit ratio {row['ratio_fit_seconds']:.2f}"
                if name != "cold"
                else ""
            ),
            flush=True,
        )
    print(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
