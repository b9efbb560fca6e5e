"""``vasp train`` end to end on a tiny published features/dt=D (no Spark: the tables are written here)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_model.data import layout, storage
from vasp_model.data.features import Features, load_features

DATE = "2026-02-03"
LOW_RATED = 3  # items each test user rated without liking them


def publish_features(features: Features, warehouse: str, date: str = DATE, low_rated: int = 0) -> None:
    """Write ``features`` as the features/dt=D tables of the data contract and publish them; each
    test user also rated ``low_rated`` items of the vocabulary without liking them (``consumed``)."""
    final = layout.features_dir(warehouse, date)
    staging = storage.staging_dir(final)
    i32, s = pa.int32(), pa.string()
    splits = [
        ("train", features.train_user_idx, features.train_user_ids, features.train),
        ("validation", features.validation.user_idx, features.validation.user_ids, None),
        ("test", features.test.user_idx, features.test.user_ids, None),
    ]
    users = {"user_idx": [], "user_id": [], "split": []}
    inter = {"user_idx": [], "item_id": [], "item_idx": []}

    def add_rows(user_idx, csr):
        for pos, u in enumerate(user_idx):
            for j in csr[pos].indices:
                inter["user_idx"].append(int(u))
                inter["item_id"].append(str(features.item_ids[j]))
                inter["item_idx"].append(int(j))

    for name, idx, ids, csr in splits:
        users["user_idx"] += [int(u) for u in idx]
        users["user_id"] += [str(u) for u in ids]
        users["split"] += [name] * len(idx)
        if csr is not None:
            add_rows(idx, csr)
    order = np.argsort(users["user_idx"])
    users = {k: [v[i] for i in order] for k, v in users.items()}
    # user_idx must be contiguous 0..U-1 in the contract: remap
    remap = {u: i for i, u in enumerate(users["user_idx"])}
    users["user_idx"] = list(range(len(remap)))
    inter["user_idx"] = [remap[u] for u in inter["user_idx"]]

    def eval_table(split):
        out = {"user_idx": [], "item_idx": [], "role": []}
        for role, csr in (("fold_in", split.fold_in), ("holdout", split.holdout)):
            for pos, u in enumerate(split.user_idx):
                for j in csr[pos].indices:
                    out["user_idx"].append(remap[int(u)])
                    out["item_idx"].append(int(j))
                    out["role"].append(role)
                    if role == "fold_in":
                        inter["user_idx"].append(remap[int(u)])
                        inter["item_id"].append(str(features.item_ids[j]))
                        inter["item_idx"].append(int(j))
        return out

    validation, test = eval_table(features.validation), eval_table(features.test)
    consumed = {k: list(v) for k, v in inter.items()}
    for split in (features.validation, features.test):
        rated = split.fold_in + split.holdout
        for pos, u in enumerate(split.user_idx):
            liked = set(rated[pos].indices)
            extra = [j for j in range(features.n_items) if j not in liked][:low_rated] if split is features.test else []
            for j in [*split.holdout[pos].indices, *extra]:
                consumed["user_idx"].append(remap[int(u)])
                consumed["item_id"].append(str(features.item_ids[j]))
                consumed["item_idx"].append(int(j))
    ab = {"user_idx": [], "copy": [], "half": [], "item_idx": []}
    for k, (a, b) in enumerate(features.ab_copies):
        for half, csr in (("A", a), ("B", b)):
            for pos, u in enumerate(features.train_user_idx):
                for j in csr[pos].indices:
                    ab["user_idx"].append(remap[int(u)])
                    ab["copy"].append(k)
                    ab["half"].append(half)
                    ab["item_idx"].append(int(j))
    tables = {
        "items": (
            {
                "item_idx": list(range(features.n_items)),
                "item_id": [str(i) for i in features.item_ids],
                "popularity": features.popularity.tolist(),
            },
            pa.schema([("item_idx", i32), ("item_id", s), ("popularity", pa.int64())]),
        ),
        "users": (users, pa.schema([("user_idx", i32), ("user_id", s), ("split", s)])),
        "interactions": (inter, pa.schema([("user_idx", i32), ("item_id", s), ("item_idx", i32)])),
        "consumed": (consumed, pa.schema([("user_idx", i32), ("item_id", s), ("item_idx", i32)])),
        "validation": (validation, pa.schema([("user_idx", i32), ("item_idx", i32), ("role", s)])),
        "test": (test, pa.schema([("user_idx", i32), ("item_idx", i32), ("role", s)])),
        "train_ab": (ab, pa.schema([("user_idx", i32), ("copy", i32), ("half", s), ("item_idx", i32)])),
        "quarantine": (
            {"source": [], "line": [], "raw": [], "reason": []},
            pa.schema([("source", s), ("line", pa.int64()), ("raw", s), ("reason", s)]),
        ),
    }
    for name, (columns, schema) in tables.items():
        os.makedirs(f"{staging}/{name}", exist_ok=True)
        pq.write_table(pa.table(columns, schema=schema), f"{staging}/{name}/part-00000.parquet")
    storage.publish(staging, final, {"schema_version": 1, "input_fingerprint": "test"})


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = np.zeros((240, 30), np.float32)
    for u in range(240):
        g = u % 2
        X[u, rng.choice(np.arange(g * 15, g * 15 + 15), 7, replace=False)] = 1
    wh = str(tmp_path_factory.mktemp("wh"))
    publish_features(Features.from_matrix(X, n_heldout_users=24, n_copies=2, seed=0), wh, low_rated=LOW_RATED)
    return wh


def _train(warehouse: str, checkpoint_dir, *flags: str) -> int:
    from vasp_model import cli

    argv = ["train", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--epochs", "2", "--hidden", "12"]
    return cli.main([*argv, "--no-tracking", "--quiet", "--checkpoint-dir", str(checkpoint_dir), *flags])


def _lists(out: str) -> dict[str, list[str]]:
    topk = pq.read_table(f"{out}/test_topk.parquet").to_pandas()
    assert list(topk.columns) == ["user_id", "rank", "item_id"]
    return {u: rows.sort_values("rank").item_id.tolist() for u, rows in topk.groupby("user_id")}


def test_train_cli_publishes_model_metrics_and_test_topk(warehouse, tmp_path, capsys):
    from vasp_model.recommenders.bundle import ModelBundle

    assert _train(warehouse, tmp_path / "ckpt") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["test"]) == {"vasp", "ease", "popularity"}
    assert 0 <= summary["test"]["vasp"]["ndcg@100"] <= 1

    out = layout.models_dir(warehouse, DATE)
    assert storage.is_published(out)
    assert {"model", "metrics.json", "history.json", "test_topk.parquet", storage.MANIFEST} <= set(os.listdir(out))
    metrics = json.load(open(f"{out}/metrics.json"))
    assert metrics["test"]["vasp"]["ndcg@100"] == pytest.approx(summary["test"]["vasp"]["ndcg@100"])
    assert len(json.load(open(f"{out}/history.json"))) == 2
    assert storage.read_json(f"{out}/{storage.MANIFEST}")["exclude"] == "all"
    bundle = ModelBundle.load(f"{out}/model")
    assert bundle.metadata["config"]["model"]["hidden"] == 12

    # test_topk under the default rule: top 100 (here: every item left) per test user, leaving out
    # everything the user interacted with except the held-out items (what the metrics score)
    features = load_features(warehouse, DATE)
    test, ids = features.test, np.asarray([str(i) for i in features.item_ids], dtype=object)
    lists = _lists(out)
    assert set(lists) == set(test.user_ids)
    for p, user in enumerate(test.user_ids):
        low_rated = set(ids[(test.consumed[p] - test.fold_in[p] - test.holdout[p]).indices])
        assert len(low_rated) == LOW_RATED
        left_out = set(ids[test.fold_in[p].indices]) | low_rated
        assert set(lists[user]) == set(ids) - left_out and len(lists[user]) == len(set(lists[user]))

    # under `positives` the low-rated items are candidates again, and the lists recompute the metrics
    assert _train(warehouse, tmp_path / "ckpt-positives", "--exclude", "positives") == 0
    metrics = json.load(open(f"{out}/metrics.json"))
    lists = _lists(out)
    index = {item: j for j, item in enumerate(ids)}
    from vasp_model.evaluation.metrics import evaluate_topk

    mat = np.full((test.n_users, 100), -1)
    for p, user in enumerate(test.user_ids):
        assert set(lists[user]) == set(ids) - set(ids[test.fold_in[p].indices])
        mat[p, : len(lists[user])] = [index[item] for item in lists[user]]
    recomputed = evaluate_topk(mat, test.holdout, features.popularity)
    assert recomputed["ndcg@100"] == pytest.approx(metrics["test"]["vasp"]["ndcg@100"], abs=1e-9)


def test_train_cli_rejects_bad_config(warehouse):
    from vasp_model import cli

    assert cli.main(["train", "--warehouse", warehouse, "--date", DATE, "--dropout", "1.5", "--no-tracking"]) == 1
    assert cli.main(["train", "--warehouse", warehouse, "--date", "2020-01-01", "--no-tracking"]) == 1
