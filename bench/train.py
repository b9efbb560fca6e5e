"""Training speed of the ``cpu`` preset on ML-1M: epoch time, rows/s, GFLOP/s vs this machine's matmul peak.

    python bench/train.py [--epochs 3] [--backend tensorflow|jax] [--jit auto|true|false] [--warehouse W --date D]
    python bench/train.py --compare      # the product default beside the other backends/XLA choices, one run

``--compare`` times, one after the other in fresh processes: TensorFlow with ``jit_compile="auto"``
(the product default: TensorFlow's kernels for the step, each optimizer update fused by XLA) and
oneDNN's custom ops on (as ``vasp train`` loads TensorFlow), the same with them off
(``VASP_TRAIN_ONEDNN=0``), TensorFlow with XLA off (updates unfused too), with XLA forced on for the
whole step, and JAX; it prints each one's epoch time as a ratio to the fastest and its fraction of
the matmul peak measured in that process.

Without ``--warehouse`` the ML-1M split is built in memory from ``../shared/data/ml-1m/ratings.csv``
(rating > 3.5, vae_cf protocol, 600 + 600 held-out users; the same protocol as ``vasp build``).
The peak is the median GFLOP/s of a float32 matmul of the same size class measured in this run
(numpy and a jitted ``keras.ops.matmul``). Epoch times are medians over the epochs after the first
(the first includes compilation). FLOPs: forward matmuls per row × 3 (forward + backward).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ML1M = os.path.join(ROOT, "..", "shared", "data", "ml-1m", "ratings.csv")


def load(args):
    if args.warehouse:
        from vasp_model.data.features import load_features

        return load_features(args.warehouse, args.date)
    import pandas as pd

    from vasp_model.data.features import Features

    df = pd.read_csv(args.ratings)
    df = df[df.rating > 3.5]
    return Features.from_interactions(df.user_id.values, df.item_id.values, n_heldout_users=600, n_copies=4, seed=0)


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    import keras
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / float(np.median(times)) / 1e9

    out = {"numpy_gflops": timed(lambda: a @ b)}
    ka, kb = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
    out["keras_gflops"] = timed(lambda: keras.ops.convert_to_numpy(keras.ops.matmul(ka, kb)))
    out["peak_gflops"] = max(out.values())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="Epochs to time (plus one for compilation).")
    parser.add_argument("--backend", default=None, help="Keras backend (default: KERAS_BACKEND or tensorflow).")
    parser.add_argument("--preset", default="cpu", help="Config preset to time.")
    parser.add_argument("--warehouse", default=None, help="Read features/dt=D from this warehouse instead.")
    parser.add_argument("--date", default=None, help="Date of the features in --warehouse.")
    parser.add_argument("--ratings", default=ML1M, help="ML-1M ratings.csv (when no --warehouse).")
    parser.add_argument("--jit", default=None, help="jit_compile: auto, true or false (default: the preset's).")
    parser.add_argument("--compare", action="store_true", help="Time the default beside the alternatives.")
    args = parser.parse_args(argv)
    if not args.warehouse and not os.path.exists(args.ratings):
        print(f"skip: {args.ratings} not found", file=sys.stderr)
        return 0
    if args.compare:
        return compare(args, argv or sys.argv[1:])
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    from vasp_model.core.defaults import quiet_tensorflow, tensorflow_for_training

    quiet_tensorflow()
    tensorflow_for_training()  # as `vasp train` loads it

    import keras
    import numpy as np

    from vasp_model.core.config import make_config
    from vasp_model.nn.model import build_model, flops_per_row
    from vasp_model.train.batches import ABBatches, fit_plan
    from vasp_model.train.optimizer import compile_model

    features = load(args)
    config = make_config(args.preset, train_overrides={"jit_compile": args.jit})
    mc, tc = config.model, config.train
    peak = matmul_peak()

    keras.utils.set_random_seed(0)
    plan = ABBatches(features.ab_copies, tc.batch_users, seed=0)
    model = build_model(features.n_items, mc, seed=0)
    fused_updates = compile_model(model, config, 1e-3)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    fit_plan(model, plan, args.epochs + 1, callbacks=[Timer()], verbose=0)
    rows = len(plan) * 2 * plan.batch_users
    epoch_s = float(np.median(times[1:]))
    gflops = 3 * flops_per_row(features.n_items, mc) * rows / epoch_s / 1e9
    # the batch feeding alone (host): CSR -> dense per step
    t0 = time.perf_counter()
    for i in range(len(plan)):
        plan.batch(i)
    feed_s = time.perf_counter() - t0
    result = {
        "backend": keras.backend.backend(),
        "jit_compile": model.jit_compile,
        "fused_updates": fused_updates,
        "preset": args.preset,
        "items": features.n_items,
        "train_users": int(features.train.shape[0]),
        "steps_per_epoch": len(plan),
        "rows_per_epoch": rows,
        "first_epoch_s": round(times[0], 2),
        "epoch_s_median": round(epoch_s, 2),
        "epoch_s_all": [round(t, 2) for t in times],
        "rows_per_s": round(rows / epoch_s, 1),
        "batch_feed_s_per_epoch": round(feed_s, 3),
        "achieved_gflops": round(gflops, 1),
        "numpy_matmul_gflops": round(peak["numpy_gflops"], 1),
        "keras_matmul_gflops": round(peak["keras_gflops"], 1),
        "fraction_of_peak": round(gflops / peak["peak_gflops"], 3),
    }
    print(
        f"{result['backend']} ({xla(result)}) {args.preset}: epoch {epoch_s:.2f}s (first {times[0]:.1f}s), "
        f"{result['rows_per_s']:.0f} rows/s, {gflops:.1f} GFLOP/s = {result['fraction_of_peak']:.0%} of the "
        f"{peak['peak_gflops']:.1f} GFLOP/s matmul peak"
    )
    print(json.dumps(result))
    return 0


def xla(result: dict) -> str:
    """What XLA compiled in a run: the whole train step, the optimizer updates alone, or nothing."""
    if result["jit_compile"]:
        return "XLA on"
    return "XLA for the updates" if result.get("fused_updates") else "XLA off"


# (backend, jit_compile, label, environment)
VARIANTS = (
    ("tensorflow", "auto", "the default", {}),
    ("tensorflow", "auto", "oneDNN off", {"VASP_TRAIN_ONEDNN": "0"}),
    ("tensorflow", "false", "XLA off", {}),
    ("tensorflow", "true", "XLA forced on", {}),
    ("jax", "auto", "JAX", {}),
)


def compare(args, argv) -> int:
    """Each variant in a fresh process (one backend per process), then the epoch times side by side."""
    passed = [a for a in argv if a != "--compare"]
    results = []
    for backend, jit, label, env in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), *passed, "--backend", backend, "--jit", jit]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **env})
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            print(f"{label}: failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        results.append((label, json.loads(lines[-1])))
    fastest = min(r["epoch_s_median"] for _, r in results)
    for label, r in results:
        print(
            f"{label:>14}: {r['backend']}, {xla(r)}: epoch {r['epoch_s_median']:.2f} s "
            f"= {r['epoch_s_median'] / fastest:.2f}x the fastest, {r['fraction_of_peak']:.0%} of the matmul peak"
        )
    print(json.dumps({"compare": [dict(r, variant=label) for label, r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
