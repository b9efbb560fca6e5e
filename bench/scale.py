"""Scale figures (issue 14), measured on this machine; each section runs on its own.

``given``: Gowalla on the LightGCN split (``../shared/data/gowalla-lightgcn``: train.txt and
test.txt as provided). ``vasp build --test-input`` builds the features and the given split. EASE's
λ is chosen on the validation users' nDCG@100 (EASE fitted on the train users; float64 when that
fits the memory available, else float32 solved in place); then EASE with that λ is fitted again on
every test-file user's train.txt row (all of Gowalla's users), as LightGCN trains, within the build's
vocabulary (the train users' items: an item only validation or test users have is out of it, and a
test item outside it counts as missed). Both, popularity, and the first EASE with its B pruned
to each item's k strongest neighbours (``--prune``: what the memory-bounded representation costs in
quality) are scored on every test-file user with LightGCN's metric definitions @20, printed beside the
figures that paper publishes on this split. Peak RSS is reported per stage (the build's Spark driver and JVM, then this process).
``--vasp PRESET`` adds VASP: the product's own ``vasp train --preset PRESET --no-tracking`` on the same
features (its given-split figures from the published ``metrics.json``: the served model, trained on the
train users and folding in every user's train.txt row); a model already published for the date with that
preset is read instead of trained again (its run's seconds from its metrics, its peak RSS unknown).

``kernel``: the ``cpu`` preset's train step with the dense Neural EASE kernel against pruned ones
(``--neighbours``: k targets per item) at each catalog width of ``--items``, on synthetic rows of
``--row-items`` items each (the widest row: ``--max-positives``), each pruned kernel read row by row
(``max_positives`` entries of each row) and through the batch's own nonzeros (``batch_positives`` sized
as ``vasp train`` sizes it), each configuration in a process of its own on ``--backend``: the median step
of five after a first (compiling) one, the ratio to the dense step in the same run, and the process's
peak RSS. The dense kernel is skipped where its estimate
(:func:`vasp_model.train.memory.training_memory`) does not fit what the machine has available.

``solve``: EASE's in-place inverse of XᵀX + λI at each ``--solves`` width and precision (synthetic
rows of ``--row-items`` items, as many users as items), on LAPACK's potrf + potri on one BLAS thread (how a
catalog this wide was solved before: OpenBLAS's threaded Cholesky crashes there) against
:func:`vasp_model.recommenders.spd_inverse.invert_spd_in_place` on every BLAS thread, each in a
process of its own: seconds, GFLOP/s (I³ flops) and the ratio in the same run.

    .venv/bin/python bench/scale.py given
    .venv/bin/python bench/scale.py given --grid 100,300,1000 --heldout-users 1000
    .venv/bin/python bench/scale.py given --vasp cpu --warehouse /work/gowalla   # hours on 2 CPU cores
    .venv/bin/python bench/scale.py kernel --items 16920,40981 --neighbours 512,256
    .venv/bin/python bench/scale.py solve --solves 16920:float64,40981:float32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, REPO)

# LightGCN (He et al., SIGIR 2020), Table 3, Gowalla: the published figures on exactly this split.
LIGHTGCN_GOWALLA = {"lightgcn_recall@20": 0.1830, "lightgcn_ndcg@20": 0.1554}


def peak_rss_gib(who: int) -> float:
    """Peak resident set of this process (RUSAGE_SELF) or of its waited-for children, GiB."""
    return resource.getrusage(who).ru_maxrss / 2**20


def ease_precision(X) -> str:
    """float64 when its λ search on ``X`` fits in what the machine has available, else float32."""
    from vasp_model.recommenders.baselines import gram_chunk_entries
    from vasp_model.train.memory import available_bytes, ease_solve_bytes

    free, _ = available_bytes()
    need = ease_solve_bytes(X.shape[1], "float64", gram_chunk_entries(X))
    return "float64" if free is None or need < 0.9 * free else "float32"


def build_given(data: str, warehouse: str, date: str, heldout_users: int) -> float:
    """``vasp build`` of train.txt with test.txt as the given split (skipped when published); seconds."""
    from bench.quality import vasp_command
    from vasp_model.data import layout, storage

    if storage.is_published(layout.features_dir(warehouse, date)):
        return 0.0
    cmd = vasp_command("build", "--format", "user-items", "--input", os.path.join(data, "train.txt"))
    cmd += ["--test-input", os.path.join(data, "test.txt"), "--heldout-users", str(heldout_users)]
    cmd += ["--warehouse", warehouse, "--date", date]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def train_vasp(warehouse: str, date: str, preset: str) -> tuple[dict, dict]:
    """The given-split metrics of the VASP published for ``date`` with ``preset`` (trained now by ``vasp train``
    unless already there), and its ``vasp train`` seconds and peak RSS (None where an earlier run trained it)."""
    from bench.quality import run_measured, vasp_command
    from vasp_model.data import layout, storage

    models = layout.models_dir(warehouse, date)
    published = storage.is_published(models) and storage.read_json(os.path.join(models, "_manifest.json"))
    rss = None
    if not published or published.get("config", {}).get("preset") != preset:
        cmd = vasp_command("train", "--warehouse", warehouse, "--date", date, "--preset", preset, "--config", "preset")
        rss = run_measured([*cmd, "--no-tracking", "--quiet"], os.path.join(storage.local_path(warehouse), "train.log"))
    metrics = storage.read_json(os.path.join(models, "metrics.json"))
    if "given" not in metrics:
        raise SystemExit(
            f"the model published for {date} has no given-split metrics: train it on features built with --test-input"
        )
    run = {"seconds": round(metrics["timings"]["total_seconds"], 1), "peak_rss_gib": rss and round(rss, 2)}
    return metrics["given"]["vasp"], run


def given(args) -> dict:
    from vasp_model.data.features import load_features
    from vasp_model.evaluation.given import evaluate_given
    from vasp_model.recommenders.baselines import (
        Popularity,
        PrunedEASE,
        fit_ease,
        fit_ease_on_validation,
        pruned_matrix,
    )

    data = os.path.join(args.data, "gowalla-lightgcn")
    if not os.path.exists(os.path.join(data, "test.txt")):
        print(f"skip given: {data} not found", file=sys.stderr)
        return {}
    build_s = build_given(data, args.warehouse, args.date, args.heldout_users)
    build_rss = peak_rss_gib(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    features = load_features(args.warehouse, args.date)
    load_s = time.perf_counter() - start
    n = features.n_items
    precision = args.precision or ease_precision(features.train)
    grid = tuple(float(x) for x in args.grid.split(",") if x.strip())
    print(f"EASE over {features.n_items:,} items in {precision}, grid {grid}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    val = features.validation
    ease, by_lambda, _ = fit_ease_on_validation(
        features.train, val.fold_in, val.holdout, grid=grid, max_expand=args.max_expand, precision=precision
    )
    fit_s = time.perf_counter() - start
    best_lambda = ease.lambda_
    start = time.perf_counter()
    popularity = Popularity.from_counts(features.popularity)
    metrics = evaluate_given({"ease": (ease, n), "popularity": (popularity, n)}, features)
    score_s = time.perf_counter() - start
    for k in args.prune:  # what pruning B to each item's k strongest neighbours costs
        pruned = PrunedEASE(pruned_matrix(ease.B, k))
        metrics |= evaluate_given({f"ease_pruned_{k}": (pruned, n)}, features)
        del pruned
    del ease
    start = time.perf_counter()
    every_user = fit_ease(features.given.fold_in, best_lambda, precision)
    refit_s = time.perf_counter() - start
    metrics |= evaluate_given({"ease_every_user": (every_user, n)}, features)
    del every_user
    vasp_run = None
    if args.vasp:
        metrics["vasp"], vasp_run = train_vasp(args.warehouse, args.date, args.vasp)
    counts = features.manifest["given"]["counts"]
    return {
        "metrics": metrics,
        "published": {"lightgcn": LIGHTGCN_GOWALLA},
        "ease": {"lambda": best_lambda, "precision": precision, "validation_ndcg@100": by_lambda},
        "shape": {
            "items": features.n_items,
            "train_users": features.train.shape[0],
            "validation_users": val.n_users,
            "given_users": features.given.n_users,
            "given_test_items": counts["holdout"] + counts["oov"],
            "given_test_items_oov": counts["oov"],
        },
        "seconds": {
            "build": round(build_s, 1),
            "load": round(load_s, 1),
            "ease_search": round(fit_s, 1),
            "score_given": round(score_s, 1),
            "ease_every_user_fit": round(refit_s, 1),
        },
        "peak_rss_gib": {"build": round(build_rss, 2), "train_and_score": round(peak_rss_gib(resource.RUSAGE_SELF), 2)},
        "vasp": vasp_run and {"preset": args.vasp, **vasp_run},
    }


def print_given(got: dict) -> None:
    shape = got["shape"]
    print(
        f"Gowalla, LightGCN split: {shape['given_users']:,} users scored, {shape['items']:,} items, "
        f"{shape['train_users']:,} users trained on ({shape['validation_users']:,} validation users chose λ), "
        f"{shape['given_test_items']:,} test items ({shape['given_test_items_oov']:,} outside the vocabulary)"
    )
    header = f"{'model':<34} {'Recall@20':>10} {'nDCG@20':>10} {'nDCG@100 (vae_cf)':>18}"
    print(header)
    print("-" * len(header))
    lam = got["ease"]["lambda"]
    labels = {"ease": f"EASE λ={lam:g}, train users", "ease_every_user": f"EASE λ={lam:g}, every user"}
    labels |= {name: f"  B pruned to {name.rsplit('_', 1)[1]}/item" for name in got["metrics"] if "pruned" in name}
    if got.get("vasp"):
        labels["vasp"] = f"VASP ({got['vasp']['preset']} preset), train users"
    rows = [(labels.get(name, name), m) for name, m in got["metrics"].items()]
    rows.append(("LightGCN (published)", got["published"]["lightgcn"]))
    for label, m in rows:
        vae = f"{m['ndcg@100']:>18.4f}" if "ndcg@100" in m else f"{'-':>18}"
        print(f"{label:<34} {m['lightgcn_recall@20']:>10.4f} {m['lightgcn_ndcg@20']:>10.4f} {vae}")
    print(f"seconds: {json.dumps(got['seconds'])}; peak RSS GiB: {json.dumps(got['peak_rss_gib'])}")
    if got.get("vasp"):
        print(f"vasp train: {json.dumps(got['vasp'])}")


def step_seconds(
    items: int, neighbours: int, max_positives: int, row_items: int, rows: int, batch_positives: int = 0
) -> list[float]:
    """Seconds of six ``cpu``-preset train steps on ``rows`` synthetic rows (0 neighbours: the dense kernel;
    ``batch_positives`` 0: a pruned kernel reads each row through ``max_positives`` of its entries)."""
    import dataclasses

    import keras
    import numpy as np
    import scipy.sparse as sp

    from vasp_model.core.config import make_config
    from vasp_model.nn.model import build_model
    from vasp_model.train.optimizer import compile_model

    config = make_config("cpu", env={})
    model_config = dataclasses.replace(  # dense (0 neighbours) at any width, pruned to k
        config.model, ease_neighbours=neighbours or None, ease_prune_above=None
    )
    X = sp.random(rows, items, density=row_items / items, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    x = X.toarray()
    keras.utils.set_random_seed(0)
    model = build_model(
        items, model_config, seed=0, max_positives=max_positives, batch_positives=batch_positives or None
    )
    compile_model(model, config, 1e-3)
    seconds = []
    for _ in range(6):
        start = time.perf_counter()
        model.train_on_batch(x, x)
        seconds.append(time.perf_counter() - start)
    return seconds


def kernel(args) -> dict:
    import dataclasses
    import statistics

    from vasp_model.core.config import make_config
    from vasp_model.train.memory import available_bytes, batch_positives_for, training_memory

    free, _ = available_bytes()
    rows = []
    for items in args.items:
        cpu = make_config("cpu", env={})
        dense = dataclasses.replace(cpu, model=dataclasses.replace(cpu.model, ease_prune_above=None))
        dense_fits = free is None or training_memory(items, 10**6, dense).phases["fit"] < free
        # a pruned kernel read row by row, then through the batch's nonzeros as vasp train sizes it
        batch = batch_positives_for(args.rows * args.row_items, args.max_positives)
        runs = ([(0, 0)] if dense_fits else []) + [(k, b) for k in args.neighbours for b in (0, batch)]
        for k, batch_positives in runs:
            spec = f"{items},{k},{args.max_positives},{batch_positives}"
            cmd = [sys.executable, os.path.abspath(__file__), "step", "--step", spec]
            cmd += ["--row-items", str(args.row_items), "--rows", str(args.rows)]
            env = {**os.environ, "KERAS_BACKEND": args.backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), cmd)
            seconds = json.loads(out.strip().splitlines()[-1])
            rows.append(
                {
                    "items": items,
                    "neighbours": k or None,
                    "batch_positives": batch_positives or None,
                    "step_seconds": round(statistics.median(seconds[1:]), 3),
                    "first_step_seconds": round(seconds[0], 2),
                    "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
                }
            )
    for row in rows:
        dense = [r for r in rows if r["items"] == row["items"] and r["neighbours"] is None]
        row["vs_dense"] = round(row["step_seconds"] / dense[0]["step_seconds"], 3) if dense else None
    return {"backend": args.backend, "rows": args.rows, "row_items": args.row_items, "results": rows}


def print_kernel(got: dict) -> None:
    print(
        f"cpu preset train step, {got['backend']}, {got['rows']} rows of {got['row_items']} items "
        "(median of 5 after the first)"
    )
    header = f"{'items':>8} {'Neural EASE':>18} {'s/step':>8} {'vs dense':>9} {'peak RSS GiB':>13}"
    print(header)
    print("-" * len(header))
    for r in got["results"]:
        read = "rows" if r.get("batch_positives") is None else "batch"
        kind = "dense" if r["neighbours"] is None else f"k = {r['neighbours']}, {read}"
        ratio = "-" if r["vs_dense"] is None else f"{r['vs_dense']:.2f}"
        print(f"{r['items']:>8,} {kind:>18} {r['step_seconds']:>8.2f} {ratio:>9} {r['peak_rss_gib']:>13.2f}")


def step(args) -> dict:
    if args.step.startswith("solve,"):
        _, items, precision, method = args.step.split(",")
        print(json.dumps(solve_seconds(int(items), precision, args.row_items, method)))
        return {}
    items, k, max_positives, batch_positives = (int(v) for v in args.step.split(","))
    print(json.dumps(step_seconds(items, k, max_positives, args.row_items, args.rows, batch_positives)))
    return {}


def solve_seconds(items: int, precision: str, row_items: int, method: str) -> float:
    """Seconds of one in-place inverse of a synthetic XᵀX + 100·I (``method``: ``lapack`` or ``blocked``)."""
    import numpy as np
    import scipy.sparse as sp

    from vasp_model.recommenders.baselines import EASE
    from vasp_model.recommenders.spd_inverse import invert_spd_in_place, invert_spd_lapack

    X = sp.random(items, items, density=row_items / items, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    A = EASE.gram(X, np.dtype(precision).type).T  # Fortran order, as EASE.fit_gram solves it
    A[np.diag_indices_from(A)] += 100.0
    start = time.perf_counter()
    (invert_spd_in_place if method == "blocked" else invert_spd_lapack)(A)  # lapack: the parent runs it on 1 thread
    return time.perf_counter() - start


def solve(args) -> dict:
    rows = []
    for spec in args.solves:
        items, precision = spec.split(":")
        seconds = {}
        for method, threads in (("lapack", "1"), ("blocked", str(os.cpu_count()))):
            cmd = [sys.executable, os.path.abspath(__file__), "step", "--step", f"solve,{items},{precision},{method}"]
            cmd += ["--row-items", str(args.row_items)]
            print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
            env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            seconds[method] = json.loads(out.strip().splitlines()[-1])
        flops = float(items) ** 3
        rows.append(
            {
                "items": int(items),
                "precision": precision,
                "lapack_one_thread_seconds": round(seconds["lapack"], 1),
                "blocked_seconds": round(seconds["blocked"], 1),
                "blocked_gflops": round(flops / seconds["blocked"] / 1e9, 1),
                "speedup": round(seconds["lapack"] / seconds["blocked"], 2),
            }
        )
    return {"threads": os.cpu_count(), "row_items": args.row_items, "results": rows}


def print_solve(got: dict) -> None:
    print(f"EASE's in-place SPD inverse, synthetic XᵀX of {got['row_items']} items a row")
    header = (
        f"{'items':>8} {'precision':>9} {'LAPACK, 1 thread s':>19} {'blocked s':>10} {'GFLOP/s':>8} {'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in got["results"]:
        print(
            f"{r['items']:>8,} {r['precision']:>9} {r['lapack_one_thread_seconds']:>19.1f} "
            f"{r['blocked_seconds']:>10.1f} {r['blocked_gflops']:>8.1f} {r['speedup']:>8.2f}x"
        )


SECTIONS = {
    "given": (given, print_given),
    "kernel": (kernel, print_kernel),
    "solve": (solve, print_solve),
    "step": (step, None),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=list(SECTIONS), help="The section to run.")
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"), help="The shared data root.")
    parser.add_argument("--warehouse", default="/tmp/vasp_bench_scale", help="Warehouse root of the built features.")
    parser.add_argument("--date", default="2026-01-01", help="Logical date of the built features.")
    parser.add_argument("--heldout-users", type=int, default=1000, help="Validation (and vae_cf test) users.")
    parser.add_argument("--grid", default="100,300,1000", help="Comma-separated EASE λ grid.")
    parser.add_argument("--max-expand", type=int, default=1, help="Extra λ past an edge optimum.")
    parser.add_argument("--precision", default=None, choices=("float64", "float32"), help="EASE solve (default: auto).")
    parser.add_argument(
        "--prune", default="32,128,512", help="given: also score EASE's B pruned to k neighbours per item (k, ...)."
    )
    parser.add_argument("--vasp", default=None, help="given: also train (or read) VASP with this preset, e.g. cpu.")
    parser.add_argument("--items", default="16920,40981", help="kernel: catalog widths (items, ...).")
    parser.add_argument("--neighbours", default="512,256", help="kernel: pruned kernels' targets per item (k, ...).")
    parser.add_argument("--max-positives", type=int, default=811, help="kernel: the widest row a pruned kernel reads.")
    parser.add_argument("--row-items", type=int, default=27, help="kernel: items per synthetic row (mean).")
    parser.add_argument("--rows", type=int, default=512, help="kernel: rows per step (the cpu preset's 2 x 256).")
    parser.add_argument("--backend", default="jax", help="kernel: the Keras backend of the steps.")
    parser.add_argument(
        "--solves", default="16920:float64,40981:float32", help="solve: widths and precisions (items:precision, ...)."
    )
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # items,k,max_positives,batch_positives
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    args.prune = [int(k) for k in args.prune.split(",") if k.strip()]
    args.items = [int(n) for n in args.items.split(",") if n.strip()]
    args.neighbours = [int(k) for k in args.neighbours.split(",") if k.strip()]
    args.solves = [spec for spec in args.solves.split(",") if spec.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run, show = SECTIONS[args.section]
    got = run(args)
    if got and show is not None:
        show(got)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(got, out, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
