"""``vasp train`` end to end on a tiny features/dt=D built by the build job."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.data import layout, storage
from vasp_model.data.features import load_features

DATE = "2026-02-03"


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Features for DATE built by the build job from 240 users of two taste groups (7 of 15 items each)."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(240):
        g = u % 2
        for i in rng.choice(np.arange(g * 15, g * 15 + 15), 7, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    text = events_csv(users, items)
    built, _ = built_features(spark, tmp_path_factory, text, DATE, heldout_users=24, ab_copies=2, seed=0)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)  # vasp train publishes models/ beside it: never into the shared build
    return wh


def test_train_cli_publishes_model_metrics_and_test_topk(warehouse, tmp_path, capsys):
    from vasp_model import cli
    from vasp_model.recommenders.bundle import ModelBundle

    code = cli.main(
        [
            "train",
            "--warehouse",
            warehouse,
            "--date",
            DATE,
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--hidden",
            "12",
            "--no-tracking",
            "--quiet",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["test"]) == {"vasp", "ease", "popularity"}
    assert 0 <= summary["test"]["vasp"]["ndcg@100"] <= 1

    out = layout.models_dir(warehouse, DATE)
    assert storage.is_published(out)
    assert {"model", "metrics.json", "history.json", "test_topk.parquet", storage.MANIFEST} <= set(os.listdir(out))
    metrics = json.load(open(f"{out}/metrics.json"))
    assert metrics["test"]["vasp"]["ndcg@100"] == pytest.approx(summary["test"]["vasp"]["ndcg@100"])
    assert len(json.load(open(f"{out}/history.json"))) == 2
    bundle = ModelBundle.load(f"{out}/model")
    assert bundle.metadata["config"]["model"]["hidden"] == 12
    lineage = storage.read_json(f"{out}/{storage.MANIFEST}")["features_manifest"]
    assert lineage["input_digest"] == load_features(warehouse, DATE).manifest["input"]["sha256"]

    # test_topk: top 100 (here: every unseen item) per test user, fold-in excluded; metrics recompute
    features = load_features(warehouse, DATE)
    topk = pq.read_table(f"{out}/test_topk.parquet").to_pandas()
    assert list(topk.columns) == ["user_id", "rank", "item_id"]
    assert set(topk.user_id) == set(features.test.user_ids)
    index = {str(i): j for j, i in enumerate(features.item_ids)}
    from vasp_model.evaluation.metrics import evaluate_topk

    mat = np.full((features.test.n_users, 100), -1)
    pos = {str(u): p for p, u in enumerate(features.test.user_ids)}
    for row in topk.itertuples():
        assert row.item_id not in {str(features.item_ids[j]) for j in features.test.fold_in[pos[row.user_id]].indices}
        mat[pos[row.user_id], row.rank - 1] = index[row.item_id]
    recomputed = evaluate_topk(mat, features.test.holdout, features.popularity)
    assert recomputed["ndcg@100"] == pytest.approx(metrics["test"]["vasp"]["ndcg@100"], abs=1e-9)


def test_train_cli_rejects_bad_config(warehouse):
    from vasp_model import cli

    assert cli.main(["train", "--warehouse", warehouse, "--date", DATE, "--dropout", "1.5", "--no-tracking"]) == 1
    assert cli.main(["train", "--warehouse", warehouse, "--date", "2020-01-01", "--no-tracking"]) == 1
