"""Time the whole nightly DAG (``vasp run``'s ``dag.test()``) on ML-1M with the cpu preset.

Target: <= 10 minutes on a 2-core machine. Prints each task's duration, the total, the
promotion decision and test nDCG@100 of VASP vs EASE. Runs on a fresh embedded deployment
in a temporary directory (first night: no champion yet).

    .venv/bin/python bench/dag.py [--input PATH] [--preset cpu] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML1M = REPO.parent / "shared" / "data" / "ml-1m" / "ratings.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(ML1M), help=f"Interactions file (default {ML1M}).")
    parser.add_argument("--preset", default="cpu", help="Training preset (default cpu).")
    parser.add_argument("--date", default="2026-01-15", help="Logical date of the run.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary deployment and print its path.")
    args = parser.parse_args(argv)
    if not Path(args.input).exists():
        print(f"bench/dag.py: {args.input} not found; pass --input", file=sys.stderr)
        return 2

    sys.path.insert(0, str(REPO))
    from vasp_model.cli.run import embedded_environment, run_dag
    from vasp_model.data import layout, storage

    tmp = Path(tempfile.mkdtemp(prefix="vasp-bench-dag-"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))  # this checkout's DAG, from any directory
    os.environ.update(embedded_environment(home=str(tmp / "run"), warehouse=str(tmp / "warehouse")))
    try:
        result = run_dag(args.date, {"input": str(Path(args.input).resolve()), "preset": args.preset})
        wh = os.environ["VASP_WAREHOUSE"]
        print(f"\nvasp_nightly on {args.input} (preset {args.preset}): {result['state']}, "
              f"dag.test wall {result['seconds']:.1f} s ({result['seconds'] / 60:.2f} min)")  # fmt: skip
        task_total = 0.0
        for task_id, info in result["tasks"].items():
            task_total += info["seconds"] or 0.0
            seconds = "-" if info["seconds"] is None else f"{info['seconds']:8.1f} s"
            print(f"  {task_id:<26} {info['state']:<16} {seconds}")
        print(f"  {'sum of tasks':<26} {'':<16} {task_total:8.1f} s")
        if result["state"] == "success":
            record = storage.read_json(f"{layout.dataset_dir(wh, 'runs', args.date)}/run.json")
            metrics = storage.read_json(f"{layout.models_dir(wh, args.date)}/metrics.json")["test"]
            print(f"promotion: {record['promotion']['action']}: {record['promotion']['reason']}")
            print(
                "test nDCG@100: "
                + ", ".join(f"{m} {metrics[m]['ndcg@100']:.4f}" for m in ("vasp", "ease", "popularity"))
            )
        print(json.dumps({"bench": "dag", "input": args.input, "preset": args.preset, **result}, default=str))
        return 0 if result["state"] == "success" else 1
    finally:
        if args.keep:
            print(f"deployment kept at {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
