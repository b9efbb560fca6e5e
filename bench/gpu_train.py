"""VASP ``paper`` preset on MovieLens-20M-shaped synthetic data, JAX + mixed bfloat16: ms/step and TFLOP/s.

    KERAS_BACKEND=jax python bench/gpu_train.py            # on the GPU machine
    python bench/gpu_train.py --small                     # proves the script on a CPU in seconds

Data: a synthetic CSR of ≈117k training users × 20,108 items (power-law popularity, ≈70 items per
user, like ML-20M after binarization), split into A/B halves. Batch = 1024 users per direction =
2048 rows. Batch feeding: CSR → dense ON THE DEVICE: each epoch the host permutes the A/B CSR rows
once; a step then only ships the flat column indices of its contiguous row range (padded to a
fixed size, int32) and the device scatters them into the dense [2048, I] inputs/targets inside the
jitted step, so the host never builds dense rows. A background thread keeps two batches in flight.
Two modes are timed: ``device`` (the above, a stateless JAX train step with the Keras optimizer)
and ``fit`` (plain ``model.fit`` on host-densified batches, the baseline). ``--model-devices N``
runs ``fit`` with the item axis split over N devices (``vasp_model.train.sharding``): on CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` gives four virtual devices to try it.

FLOPs per row: forward matmuls (``vasp_model.nn.model.flops_per_row``) × 3 (forward + backward).
The GPU machine has no TensorFlow: bring keras (+ namex, optree) wheels; this file needs only
keras, jax, numpy and scipy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def synthetic_csr(n_users: int, n_items: int, mean_items: float, seed: int = 0):
    """Binary CSR with Zipf-like item popularity and log-normal user activity."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(np.log(mean_items) - 0.5, 1.0, n_users).astype(np.int64), 5, n_items // 2)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    cols = rng.choice(n_items, size=int(counts.sum() * 1.15), p=p)
    indptr = np.zeros(n_users + 1, np.int64)
    rows = np.repeat(np.arange(n_users), counts)
    cols = cols[: rows.size]
    mat = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_users, n_items))
    mat.sum_duplicates()
    mat.data[:] = 1
    del indptr
    return mat


def ab_split(mat, seed: int = 0):
    """One A/B copy: each row's items shuffled and cut in half."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n = mat.shape[0]
    lengths = np.diff(mat.indptr)
    keys = rng.random(mat.nnz) + np.repeat(np.arange(n), lengths)  # shuffle within each row
    order = np.argsort(keys, kind="stable")
    pos_in_row = np.arange(mat.nnz) - np.repeat(mat.indptr[:-1], lengths)
    in_a = pos_in_row < np.repeat(lengths // 2, lengths)
    rows = np.repeat(np.arange(n), lengths)
    cols = mat.indices[order]

    def build(mask):
        return sp.csr_matrix((np.ones(mask.sum(), np.float32), (rows[mask], cols[mask])), shape=mat.shape)

    return build(in_a), build(~in_a)


class DeviceFeeder:
    """Yields (a_rows, a_cols, b_rows, b_cols) padded int32 coordinate arrays, prefetched to the device."""

    def __init__(self, a, b, batch_users: int, max_nnz: int, seed: int = 0, prefetch: int = 2):
        self.a, self.b = a, b
        self.batch = batch_users
        self.max_nnz = max_nnz
        self.seed = seed
        self.prefetch = prefetch

    def _coords(self, csr, start):
        import numpy as np

        lo, hi = csr.indptr[start], csr.indptr[start + self.batch]
        n = min(hi - lo, self.max_nnz)  # (truncation never happens with the default max_nnz)
        rows = np.zeros(self.max_nnz, np.int32)
        cols = np.zeros(self.max_nnz, np.int32)
        vals = np.zeros(self.max_nnz, np.float32)  # padding adds 0 at (0, 0)
        lengths = np.diff(csr.indptr[start : start + self.batch + 1])
        rows[:n] = np.repeat(np.arange(self.batch, dtype=np.int32), lengths)[:n]
        cols[:n] = csr.indices[lo : lo + n]
        vals[:n] = 1.0
        return rows, cols, vals

    def epoch(self, epoch: int, steps: int):
        import jax
        import numpy as np

        perm = np.random.default_rng([self.seed, epoch]).permutation(self.a.shape[0])
        a, b = self.a[perm], self.b[perm]  # one row permutation per epoch; batches are then contiguous
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)

        def produce():
            for s in range(steps):
                start = s * self.batch
                q.put(jax.device_put((*self._coords(a, start), *self._coords(b, start))))
            q.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (item := q.get()) is not None:
            yield item


def make_device_step(model, optimizer, loss_fn, n_items: int, batch: int):
    import jax
    import jax.numpy as jnp

    def densify(rows, cols, vals):
        return jnp.zeros((batch, n_items), jnp.float32).at[rows, cols].add(vals).clip(0.0, 1.0)

    def compute_loss(trainable, non_trainable, x, y):
        y_pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True
        )
        loss = loss_fn(y, y_pred)
        for extra in losses:
            loss = loss + extra
        return loss, non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def step(state, ar, ac, av, br, bc, bv):
        trainable, non_trainable, opt_vars = state
        xa, xb = densify(ar, ac, av), densify(br, bc, bv)
        x = jnp.concatenate([xa, xb])
        y = jnp.concatenate([xb, xa])  # A→B and B→A
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, (trainable, non_trainable, opt_vars)

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="Tiny shapes (CPU smoke run).")
    parser.add_argument("--users", type=int, default=117_000, help="Training users.")
    parser.add_argument("--items", type=int, default=20_108, help="Items.")
    parser.add_argument("--mean-items", type=float, default=70.0, help="Mean positives per user.")
    parser.add_argument("--batch-users", type=int, default=1024, help="Users per direction (rows = 2x).")
    parser.add_argument("--steps", type=int, default=50, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps (compilation).")
    parser.add_argument("--precision", default="mixed_bfloat16", help="Keras dtype policy.")
    parser.add_argument("--modes", default="device,fit", help="Comma list of modes: device, fit.")
    parser.add_argument(
        "--model-devices",
        type=int,
        default=1,
        help="fit mode: split the item axis over this many devices (vasp_model.train.sharding; JAX).",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.users, args.items, args.batch_users, args.steps, args.warmup = 600, 300, 32, 5, 2

    import keras
    import numpy as np

    from vasp_model.core.config import make_config
    from vasp_model.nn.losses import FocalLoss
    from vasp_model.nn.model import build_model, flops_per_row
    from vasp_model.train.batches import ABBatches, make_dataset
    from vasp_model.train.memory import weight_bytes_per_device
    from vasp_model.train.sharding import item_parallel

    backend = keras.backend.backend()
    keras.config.set_dtype_policy(args.precision)
    overrides = {"hidden": 64, "latent": 32} if args.small else {}
    config = make_config("paper", overrides, {"batch_users": args.batch_users}, env={})
    t0 = time.perf_counter()
    mat = synthetic_csr(args.users, args.items, args.mean_items)
    a, b = ab_split(mat)
    data_s = time.perf_counter() - t0
    rows_per_step = 2 * args.batch_users
    flops_step = 3 * flops_per_row(args.items, config.model) * rows_per_step
    steps_available = args.users // args.batch_users
    results = {
        "backend": backend,
        "precision": args.precision,
        "users": args.users,
        "items": args.items,
        "nnz": int(mat.nnz),
        "rows_per_step": rows_per_step,
        "data_build_s": round(data_s, 1),
        "gflop_per_step": round(flops_step / 1e9, 1),
    }
    try:
        import jax

        results["device"] = str(jax.devices()[0])
    except ImportError:
        pass
    loss = FocalLoss(config.model.focal_alpha, config.model.focal_gamma)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    if "device" in modes and backend == "jax":
        keras.utils.set_random_seed(0)
        model = build_model(args.items, config.model, seed=0)
        results["params"] = int(model.count_params())
        optimizer = keras.optimizers.Nadam(config.train.learning_rates[0])
        optimizer.build(model.trainable_variables)
        max_nnz = int(max(np.diff(a.indptr[:: args.batch_users]).max(), np.diff(b.indptr[:: args.batch_users]).max()))
        max_nnz = int(np.ceil(max_nnz / 4096) * 4096)  # fixed padded size: one compilation
        step = make_device_step(model, optimizer, loss, args.items, args.batch_users)
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )
        feeder = DeviceFeeder(a, b, args.batch_users, max_nnz)
        total = args.warmup + args.steps
        times, losses, epoch, done = [], [], 0, 0
        wall_start = None
        while done < total:
            for coords in feeder.epoch(epoch, min(steps_available, total - done)):
                t0 = time.perf_counter()
                value, state = step(state, *coords)
                value.block_until_ready()
                times.append(time.perf_counter() - t0)
                losses.append(float(value))
                done += 1
                if done == args.warmup:
                    wall_start = time.perf_counter()
            epoch += 1
        ms = 1000 * float(np.median(times[args.warmup :]))
        wall_ms = 1000 * (time.perf_counter() - wall_start) / args.steps  # includes any host/feeding stall
        # diagonal of the Neural EASE kernel after training (constraint applied in stateless_apply)
        names = [v.path for v in model.trainable_variables]
        kernel = np.asarray(state[0][names.index("vasp/neural_ease/kernel")], dtype=np.float32)
        results["device_mode"] = {
            "ms_per_step": round(ms, 2),
            "tflops": round(flops_step / (ms / 1000) / 1e12, 2),
            "wall_ms_per_step": round(wall_ms, 2),
            "first_step_s": round(times[0], 2),
            "max_nnz_per_batch": max_nnz,
            "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
            "ease_diag_max": float(np.abs(np.diag(kernel)).max()),
        }
        print(f"device feeding: {ms:.2f} ms/step, {results['device_mode']['tflops']:.2f} TFLOP/s", flush=True)

    if "fit" in modes:
        keras.utils.set_random_seed(0)
        scope = item_parallel(args.model_devices).scope() if args.model_devices > 1 else contextlib.nullcontext()
        times = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.t0)

        with scope:
            model = build_model(args.items, config.model, seed=0)
            model.compile(optimizer=keras.optimizers.Nadam(1e-4), loss=loss, jit_compile=True)
            plan = ABBatches([(a, b)], args.batch_users, seed=0)
            model.fit(
                make_dataset(plan), steps_per_epoch=args.warmup + args.steps, epochs=1, callbacks=[Timer()], verbose=0
            )
        ms = 1000 * float(np.median(times[args.warmup :]))
        results["fit_mode"] = {
            "ms_per_step": round(ms, 2),
            "tflops": round(flops_step / (ms / 1000) / 1e12, 2),
            "model_devices": args.model_devices,
            "kernel_devices": len(model.ease.kernel.value.sharding.device_set) if backend == "jax" else 1,
            "weight_gib_per_device": round(weight_bytes_per_device(args.items, config, args.model_devices) / 2**30, 3),
        }
        print(f"model.fit (host-dense batches): {ms:.2f} ms/step, {results['fit_mode']['tflops']:.2f} TFLOP/s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
