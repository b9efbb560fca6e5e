"""Helpers for the registry/scoring integration tests: tiny synthetic features on disk, a tiny model,
and an ``mlflow server`` process started on a free loopback port (stopped by its process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vasp_model.data import layout, storage


def synthetic_pairs(n_users: int = 300, n_items: int = 120, seed: int = 0, rename: dict[str, str] | None = None):
    """(user_ids, item_ids) positives with clustered taste and a popularity slope (a real signal)."""
    rng = np.random.default_rng(seed)
    clusters = 4
    user_cluster = rng.integers(0, clusters, n_users)
    item_cluster = np.arange(n_items) % clusters
    decay = np.exp(-np.arange(n_items) / (n_items / 2))
    users, items = [], []
    for u in range(n_users):
        p = np.where(item_cluster == user_cluster[u], 8.0, 1.0) * decay
        chosen = rng.choice(n_items, size=int(rng.integers(6, 20)), replace=False, p=p / p.sum())
        users += [f"u{u}"] * len(chosen)
        items += [(rename or {}).get(f"i{i}", f"i{i}") for i in chosen]
    return np.asarray(users), np.asarray(items)


def write_features(warehouse: str, date: str, features, fingerprint: str = "synthetic") -> str:
    """Publish ``features`` (a :class:`vasp_model.data.features.Features`) as the contract's tables."""
    item_ids = np.asarray(features.item_ids, dtype=object)
    n_items = item_ids.size
    groups = [
        ("train", features.train_user_idx, features.train_user_ids),
        ("validation", features.validation.user_idx, features.validation.user_ids),
        ("test", features.test.user_idx, features.test.user_ids),
    ]
    old_idx = np.concatenate([g[1] for g in groups]).astype(np.int64)
    new_of = {int(old): new for new, old in enumerate(np.sort(old_idx))}  # contiguous 0..U-1

    def remap(idx):
        return np.asarray([new_of[int(i)] for i in idx], dtype=np.int32)

    users = pa.table(
        {
            "user_idx": pa.array(np.concatenate([remap(g[1]) for g in groups]), pa.int32()),
            "user_id": pa.array([str(u) for g in groups for u in g[2]], pa.string()),
            "split": pa.array([g[0] for g in groups for _ in g[1]], pa.string()),
        }
    )
    inter_u, inter_i, eval_tables = [], [], {}
    coo = features.train.tocoo()
    inter_u.append(remap(features.train_user_idx)[coo.row])
    inter_i.append(coo.col)
    for name in ("validation", "test"):
        split = getattr(features, name)
        rows_u, rows_i, roles = [], [], []
        for role, matrix in (("fold_in", split.fold_in), ("holdout", split.holdout)):
            part = matrix.tocoo()
            rows_u.append(remap(split.user_idx)[part.row])
            rows_i.append(part.col)
            roles += [role] * part.nnz
        u, i = np.concatenate(rows_u), np.concatenate(rows_i)
        inter_u.append(u)
        inter_i.append(i)
        eval_tables[name] = pa.table(
            {"user_idx": pa.array(u, pa.int32()), "item_idx": pa.array(i, pa.int32()), "role": pa.array(roles)}
        )
    iu, ii = np.concatenate(inter_u), np.concatenate(inter_i)
    ab_rows = {"user_idx": [], "copy": [], "half": [], "item_idx": []}
    for k, pair in enumerate(features.ab_copies):
        for half, matrix in zip(("A", "B"), pair, strict=True):
            part = matrix.tocoo()
            ab_rows["user_idx"].append(remap(features.train_user_idx)[part.row])
            ab_rows["copy"].append(np.full(part.nnz, k))
            ab_rows["half"] += [half] * part.nnz
            ab_rows["item_idx"].append(part.col)
    tables = {
        "items": pa.table(
            {
                "item_idx": pa.array(np.arange(n_items), pa.int32()),
                "item_id": pa.array([str(x) for x in item_ids], pa.string()),
                "popularity": pa.array(np.asarray(features.popularity), pa.int64()),
            }
        ),
        "users": users,
        "interactions": pa.table(
            {
                "user_idx": pa.array(iu, pa.int32()),
                "item_id": pa.array(item_ids[ii].astype(str), pa.string()),
                "item_idx": pa.array(ii, pa.int32()),
            }
        ),
        **eval_tables,
        "train_ab": pa.table(
            {
                "user_idx": pa.array(np.concatenate(ab_rows["user_idx"]), pa.int32()),
                "copy": pa.array(np.concatenate(ab_rows["copy"]), pa.int32()),
                "half": pa.array(ab_rows["half"], pa.string()),
                "item_idx": pa.array(np.concatenate(ab_rows["item_idx"]), pa.int32()),
            }
        ),
        "quarantine": pa.table(
            {
                "source": pa.array([], pa.string()),
                "line": pa.array([], pa.int64()),
                "raw": pa.array([], pa.string()),
                "reason": pa.array([], pa.string()),
            }
        ),
    }
    tables["consumed"] = tables["interactions"]  # every interaction here is a positive
    final = layout.features_dir(warehouse, date)
    staging = storage.staging_dir(final)
    for name, table in tables.items():
        os.makedirs(f"{storage.local_path(staging)}/{name}", exist_ok=True)
        pq.write_table(table, f"{storage.local_path(staging)}/{name}/part-0.parquet")
    manifest = {"input_fingerprint": fingerprint, "counts": {"users": users.num_rows, "items": n_items}}
    storage.publish(staging, final, manifest)
    return final


def save_model_outputs(warehouse: str, date: str, bundle, metrics: dict, history: list | None = None) -> str:
    """What ``vasp train`` publishes: models/dt=D/{model/, metrics.json, history.json}."""
    final = layout.models_dir(warehouse, date)
    staging = storage.staging_dir(final)
    bundle.save(f"{storage.local_path(staging)}/model")
    storage.write_json(f"{staging}/metrics.json", metrics)
    storage.write_json(f"{staging}/history.json", history or [])
    storage.publish(staging, final, {"date": date})
    return final


def report_of(bundle, features, baselines: dict) -> dict:
    """``baselines`` (a training report on the same data) with ``bundle``'s own test and validation
    metrics on ``features`` as its ``vasp`` entries (scored by item id, as the gate re-scores)."""
    from vasp_model.mlops.registry import rescore

    report = json.loads(json.dumps(baselines, default=float))
    for split in ("test", "validation"):
        users = getattr(features, split)
        report[split]["vasp"] = rescore(bundle, features.item_ids, users, features.popularity)
    return report


def sabotaged(bundle, seed: int = 1):
    """The same network with a shuffled vocabulary: its ids are wrong, so it ranks badly."""
    from vasp_model.recommenders.bundle import ModelBundle

    perm = np.random.default_rng(seed).permutation(bundle.n_items)
    return ModelBundle(bundle.model, bundle.item_ids[perm], bundle.popularity, metadata=dict(bundle.metadata))


# -- mlflow server ---------------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: str, timeout: float = 90.0):
    """A real ``mlflow server`` on 127.0.0.1:<free port> (SQLite + proxied artifacts); yields its URL."""
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir}/server.db",
        "--artifacts-destination",
        f"{workdir}/artifacts",
    ]
    log_path = os.path.join(workdir, "server.log")
    with open(log_path, "w") as log:
        # No background job runner (huey consumers): the registry does not need it and it doubles start-up.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: {open(log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout}s: {open(log_path).read()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn/gunicorn workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def read_json(path: str):
    with open(path) as fh:
        return json.load(fh)
