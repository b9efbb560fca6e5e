"""``jobs.score.score_partition`` cutting Arrow batches into chunks of ``batch_users`` (more users than
``batch_users``), on a tiny trained ModelBundle: every user gets the list it gets when scored alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from vasp_jobs.score import recommendation_rows, score_partition, scored_schema  # noqa: E402
from vasp_model.core import defaults  # noqa: E402

N_ITEMS = 40
TOP_N = 10


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A tiny VASP trained on two taste groups over 40 items, saved as a ModelBundle directory."""
    from vasp_model.core.config import make_config
    from vasp_model.data.features import Features
    from vasp_model.train.trainer import train

    rng = np.random.default_rng(0)
    X = np.zeros((200, N_ITEMS), np.float32)
    for u in range(200):
        X[u, rng.choice(np.arange(u % 2 * 20, u % 2 * 20 + 20), 8, replace=False)] = 1
    features = Features.from_matrix(X, n_heldout_users=20, n_copies=2, seed=0)
    config = make_config("tiny", train_overrides={"epochs": (2,), "learning_rates": (1e-2,)}, env={})
    result = train(features, config, verbose=0, evaluate_baselines=False)
    return result.bundle.save(str(tmp_path_factory.mktemp("score") / "bundle"))


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    from vasp_model.recommenders.bundle import ModelBundle

    return ModelBundle.load(bundle_dir, threads=1)


def _users(vocabulary) -> dict[str, list[str]]:
    """23 users' item ids: known ids, repeats, ids outside the vocabulary, no item at all (the
    popularity fallback), and one who has seen all but 4 items (a list shorter than TOP_N)."""
    rng = np.random.default_rng(1)
    users = {}
    for u in range(23):
        items = [str(i) for i in rng.choice(vocabulary, int(rng.integers(1, 9)), replace=False)]
        if u % 5 == 1:
            items += [items[0], f"unknown{u}"]
        users[f"user{u}"] = items
    users["user3"] = []
    users["user7"] = [f"unknown{k}" for k in range(3)]
    users["user12"] = [str(i) for i in vocabulary[4:]]
    return users


def _excluded(users: dict[str, list[str]], vocabulary) -> dict[str, list[str]]:
    """What each user's list must leave out: their items, and for every third user two more known
    items they rated without liking them (the ``consumed`` rule)."""
    out = {}
    for u, (user, items) in enumerate(users.items()):
        extra = [str(i) for i in vocabulary if str(i) not in items][:2] if u % 3 == 0 else []
        out[user] = items + extra
    return out


def _batches(
    users: dict[str, list[str]], excluded: dict[str, list[str]], sizes: tuple[int, ...]
) -> list[pa.RecordBatch]:
    """The users as consecutive Arrow batches of ``sizes`` rows (``user_id``, ``item_ids``, ``excluded_ids``),
    as mapInArrow feeds them."""
    ids, lists, masks = list(users), list(users.values()), [excluded[u] for u in users]
    ids_type = pa.list_(pa.string())
    schema = pa.schema([("user_id", pa.string()), ("item_ids", ids_type), ("excluded_ids", ids_type)])
    bounds = np.cumsum((0, *sizes))
    assert bounds[-1] == len(ids)
    return [
        pa.RecordBatch.from_pydict(
            {"user_id": ids[a:b], "item_ids": lists[a:b], "excluded_ids": masks[a:b]}, schema=schema
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _score(bundle_dir: str, batches, batch_users: int) -> pa.Table:
    """``score_partition`` over ``batches``; checks it yields one scored batch per chunk."""
    out = list(score_partition(iter(batches), bundle_dir, TOP_N, batch_users, f"test:{bundle_dir}", 1))
    assert len(out) == sum(-(-b.num_rows // batch_users) for b in batches)
    assert all(b.schema == scored_schema() for b in out)
    return pa.Table.from_batches(out, schema=scored_schema())


@pytest.mark.parametrize("batch_users", [1, 4, 5, 9])
def test_every_chunk_scores_its_own_users(bundle_dir, bundle, batch_users):
    users = _users(bundle.item_ids)
    excluded = _excluded(users, bundle.item_ids)
    batches = _batches(users, excluded, (13, 10))
    chunked = _score(bundle_dir, batches, batch_users)
    whole = _score(bundle_dir, batches, 1000)  # each input batch in one chunk
    assert chunked.num_rows == whole.num_rows == len(users)
    assert chunked.column("user_id").to_pylist() == list(users)
    vocabulary = set(bundle.item_ids)
    for row, (user, items) in enumerate(users.items()):
        got = chunked.slice(row, 1).to_pylist()[0]
        mask = excluded[user]
        alone = bundle.recommend_flat([0, len(items)], items, TOP_N, exclude=([0, len(mask)], mask))
        valid = alone.item_idx[0] >= 0
        expected = [str(i) for i in alone.item_ids[0][valid]]
        assert got["item_ids"] == expected, user
        np.testing.assert_allclose(got["scores"], alone.scores[0][valid], rtol=1e-5)
        assert got["scores"] == sorted(got["scores"], reverse=True), user
        one_chunk = whole.slice(row, 1).to_pylist()[0]
        np.testing.assert_allclose(got.pop("scores"), one_chunk.pop("scores"), rtol=1e-5)  # float32 rounding
        assert got == one_chunk, user
        seen = set(mask) & vocabulary
        assert not seen & set(got["item_ids"]), user
        assert len(got["item_ids"]) == len(set(got["item_ids"])) == min(TOP_N, N_ITEMS - len(seen)), user
        assert got["fallback"] == (not set(items) & vocabulary), user
        assert got["unknown_items"] == sum(i not in vocabulary for i in items), user
    assert chunked.column("fallback").to_pylist().count(True) == 2  # user3 (no item) and user7 (unknown only)


def test_published_rows_rank_each_list_from_one(spark, bundle_dir, bundle):
    """``recommendation_rows`` on chunked output: one row per (user, rank), ranks 1..n in list order."""
    users = _users(bundle.item_ids)
    chunked = _score(bundle_dir, _batches(users, _excluded(users, bundle.item_ids), (23,)), 4)
    rows = recommendation_rows(spark.createDataFrame(chunked.to_pandas()), "7").toPandas()
    assert set(rows.model_version) == {"7"}
    for row, user in enumerate(users):
        mine = rows[rows.user_id == user].sort_values("rank")
        items = chunked.column("item_ids")[row].as_py()
        assert list(mine["rank"]) == list(range(1, len(items) + 1)), user
        assert list(mine["item_id"]) == items, user


def test_without_an_excluded_column_each_list_leaves_out_its_own_items(bundle_dir, bundle):
    """Batches of (user_id, item_ids) alone score as batches whose ``excluded_ids`` are the ``item_ids``."""
    users = _users(bundle.item_ids)
    with_column = _score(bundle_dir, _batches(users, users, (13, 10)), 4)
    without = [batch.drop_columns(["excluded_ids"]) for batch in _batches(users, users, (13, 10))]
    assert with_column.equals(_score(bundle_dir, without, 4))


_WORKER_SCRIPT = """
import json, sys, warnings
warnings.filterwarnings("error", message=".*cannot be built")  # Keras on NumPy builds the model as on TensorFlow
import pyarrow as pa
from vasp_jobs.score import score_partition, scored_schema
bundle_dir, users_json, out = sys.argv[1:4]
users, excluded = json.load(open(users_json))
ids_type = pa.list_(pa.string())
schema = pa.schema([("user_id", pa.string()), ("item_ids", ids_type), ("excluded_ids", ids_type)])
batch = pa.RecordBatch.from_pydict(
    {"user_id": list(users), "item_ids": list(users.values()), "excluded_ids": [excluded[u] for u in users]}, schema
)
scored = list(score_partition(iter([batch]), bundle_dir, int(sys.argv[4]), 4, "worker", 1, sys.argv[5]))
with pa.OSFile(out, "wb") as sink, pa.ipc.new_file(sink, scored_schema()) as writer:
    for part in scored:
        writer.write_batch(part)
print("TENSORFLOW", "tensorflow" in sys.modules)
"""


def test_a_worker_on_the_jobs_keras_backend_scores_what_tensorflow_scores(bundle_dir, bundle, tmp_path):
    """A fresh process scoring as the job's Python workers do, on the job's Keras backend (NumPy: TensorFlow never
    imported), gives the lists and scores this process gives on TensorFlow."""
    users = _users(bundle.item_ids)
    excluded = _excluded(users, bundle.item_ids)
    (tmp_path / "users.json").write_text(json.dumps([users, excluded]))
    out = tmp_path / "scored.arrow"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}  # the driver's: the worker picks its own
    args = [bundle_dir, str(tmp_path / "users.json"), str(out), str(TOP_N), defaults.score_backend()]
    proc = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert defaults.score_backend() == "numpy" and "TENSORFLOW False" in proc.stdout
    with pa.memory_map(str(out)) as source:
        worker = pa.ipc.open_file(source).read_all()
    here = _score(bundle_dir, _batches(users, excluded, (23,)), 4)
    assert worker.drop_columns(["scores"]).equals(here.drop_columns(["scores"]))
    for got, expected in zip(worker.column("scores").to_pylist(), here.column("scores").to_pylist(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 rounding of the hidden layers
