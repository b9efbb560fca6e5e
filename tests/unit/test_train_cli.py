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
from vasp_model.evaluation.metrics import ACCURACY_KEYS

DATE = "2026-02-03"
LOW_RATED = 3  # items each test user rated without liking them


@pytest.fixture(scope="module")
def events() -> str:
    """240 users of two taste groups: each likes 7 of its group's 15 items (rating 5) and rated
    ``LOW_RATED`` of the other group's items without liking them (CSV text)."""
    rng = np.random.default_rng(0)
    users, items, ratings = [], [], []
    for u in range(240):
        g = u % 2
        liked = rng.choice(np.arange(g * 15, g * 15 + 15), 7, replace=False)
        disliked = rng.choice(np.arange((1 - g) * 15, (1 - g) * 15 + 15), LOW_RATED, replace=False)
        for i, rating in [*((i, 5.0) for i in liked), *((i, 2.0) for i in disliked)]:
            users.append(f"u{u}")
            items.append(f"i{i}")
            ratings.append(rating)
    return events_csv(users, items, ratings)


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory, events):
    """Features for DATE built by the build job from ``events``."""
    built, _ = built_features(spark, tmp_path_factory, events, DATE, heldout_users=24, ab_copies=2, seed=0)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)  # vasp train publishes models/ beside it: never into the shared build
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
    assert set(summary["test"]) == {"vasp", "ease", "popularity", "vasp_alone"}  # the last: no blend
    assert 0 <= summary["test"]["vasp"]["ndcg@100"] <= 1

    out = layout.models_dir(warehouse, DATE)
    assert storage.is_published(out)
    published = {"model", "metrics.json", "history.json", "test_topk.parquet", "per_user_metrics.parquet"}
    assert published | {storage.MANIFEST} <= set(os.listdir(out))
    metrics = json.load(open(f"{out}/metrics.json"))
    assert metrics["test"]["vasp"]["ndcg@100"] == pytest.approx(summary["test"]["vasp"]["ndcg@100"])
    assert len(json.load(open(f"{out}/history.json"))) == 2
    assert storage.read_json(f"{out}/{storage.MANIFEST}")["exclude"] == "all"
    # each phase's own peak resident set, none above the run's (in the summary, with the output writing's)
    phases = metrics["peak_resident_bytes"]
    assert {"fit", "ease_fit", "blend", "vasp_eval", "baselines_eval", "protocol_metrics"} <= set(phases)
    assert summary["peak_resident_bytes_by_phase"].items() >= phases.items()
    assert 0 < max(summary["peak_resident_bytes_by_phase"].values()) <= summary["peak_resident_bytes"]
    bundle = ModelBundle.load(f"{out}/model")
    assert bundle.metadata["config"]["model"]["hidden"] == 12
    lineage = storage.read_json(f"{out}/{storage.MANIFEST}")["features_manifest"]
    assert lineage["input_digest"] == load_features(warehouse, DATE).manifest["input"]["sha256"]

    # per-user metrics: one row per user, model and split, averaging to metrics.json's figures
    features = load_features(warehouse, DATE)
    table = pq.read_table(f"{out}/per_user_metrics.parquet")
    assert table.column_names == ["split", "user_id", "model", *ACCURACY_KEYS]
    assert str(table.schema.field("user_id").type) == "string"
    per_user = table.to_pandas()
    assert len(per_user) == 4 * (features.test.n_users + features.validation.n_users)
    for (split, model), rows in per_user.groupby(["split", "model"]):
        assert list(rows.user_id) == [str(u) for u in getattr(features, split).user_ids]
        for key in ACCURACY_KEYS:
            assert rows[key].mean() == pytest.approx(metrics[split][model][key], abs=1e-12)
    assert set(per_user.model) == {"vasp", "ease", "popularity", "vasp_alone"}
    assert set(per_user.split) == {"test", "validation"}

    # the paired-bootstrap intervals of VASP minus each baseline on the test users; the summary carries vs EASE
    intervals = metrics["intervals"]["test"]
    assert set(intervals) == {"vasp-ease", "vasp-popularity", "vasp-vasp_alone"}
    assert all(set(by_metric) == set(ACCURACY_KEYS) for by_metric in intervals.values())
    ndcg = intervals["vasp-ease"]["ndcg@100"]
    test = metrics["test"]
    assert ndcg["diff"] == pytest.approx(test["vasp"]["ndcg@100"] - test["ease"]["ndcg@100"], abs=1e-12)
    assert ndcg["low"] <= ndcg["diff"] <= ndcg["high"] and ndcg["low"] < ndcg["high"]
    assert ndcg["users"] == test["vasp"]["users"] and ndcg["resamples"] >= 1000
    assert summary["intervals"] == {"vasp-ease": {"ndcg@100": pytest.approx(ndcg)}}

    # beside it, the EASE the training fitted and measured (the fallback while VASP has no champion)
    from vasp_model.evaluation.protocol import evaluate_recommender
    from vasp_model.recommenders.bundle import EaseBundle, load_bundle

    ease = load_bundle(layout.ease_bundle_dir(warehouse, DATE))
    assert isinstance(ease, EaseBundle) and ease.metadata["lambda"] == metrics["ease_lambda"]
    split = features.test
    scored = evaluate_recommender(ease, split.fold_in, split.holdout, features.popularity)
    assert scored["ndcg@100"] == pytest.approx(test["ease"]["ndcg@100"], abs=1e-9)

    # test_topk under the default rule: top 100 (here: every item left) per test user, leaving out
    # everything the user interacted with except the held-out items (what the metrics score)
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


def test_tracked_train_logs_the_intervals_and_the_gate_can_require_them(warehouse, tmp_path, monkeypatch, capsys):
    """MLflow gets the intervals (readable keys) and per_user_metrics.parquet; ``vasp promote
    --require-significant`` reads the logged lower bound (a), and the head-to-head records its own (b)."""
    import mlflow

    from vasp_model import cli

    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    for name in ("VASP_ARTIFACT_ROOT", "VASP_TRACKING_URI", "VASP_GATE_MARGIN", "VASP_GATE_REQUIRE_SIGNIFICANT"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["train", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--epochs", "2", "--hidden", "12"]
    assert cli.main([*argv, "--tracking-uri", uri, "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    metrics = json.load(open(f"{layout.models_dir(warehouse, DATE)}/metrics.json"))
    ndcg = metrics["intervals"]["test"]["vasp-ease"]["ndcg@100"]

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    logged = client.get_run(run_id).data.metrics
    for pair, by_metric in metrics["intervals"]["test"].items():
        for key, interval in by_metric.items():
            name = f"test_{pair.replace('-', '_minus_')}_{key.replace('@', '_at_')}"
            assert (logged[name], logged[f"{name}_low"], logged[f"{name}_high"]) == pytest.approx(
                (interval["diff"], interval["low"], interval["high"])
            )
    assert "per_user_metrics.parquet" in {a.path for a in client.list_artifacts(run_id)}

    def promote(*flags: str) -> dict:
        assert cli.main(["promote", "--date", DATE, "--warehouse", warehouse, "--tracking-uri", uri, *flags]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # (a) a margin between the lower bound and the point estimate: only the point estimate clears it
    margin = repr((ndcg["low"] + ndcg["diff"]) / 2)
    d = promote("--margin", margin, "--require-significant")
    assert d["action"] == "rejected" and d["require_significant"], d
    assert "not significantly above EASE" in d["reason"] and "vasp_minus_ease interval [" in d["reason"]
    assert d["scores"]["vasp_minus_ease_low"] == pytest.approx(ndcg["low"])
    d = promote("--margin", margin)  # the default rule: the interval is recorded, not required
    assert d["action"] == "promoted" and not d["require_significant"], d
    assert d["scores"]["vasp_minus_ease_high"] == pytest.approx(ndcg["high"])

    # (b) the same model registered again for the date: re-scored on the same users, the paired
    # difference to the champion is exactly zero, and the decision records that interval
    champion = client.get_model_version("vasp", d["candidate_version"])
    source = client.get_model_version_download_uri("vasp", champion.version)  # the artifacts, not models:/m-...
    client.create_model_version("vasp", source, run_id=run_id, tags={"date": DATE})
    for flags in ((), ("--require-significant",)):
        d = promote("--margin", "-1", *flags)
        assert d["action"] == "rejected" and "does not beat champion v" in d["reason"], d
        assert d["scores"]["candidate"] == d["scores"]["champion"]
        assert (d["scores"]["candidate_minus_champion_low"], d["scores"]["candidate_minus_champion_high"]) == (0, 0)
        assert "candidate_minus_champion interval [+0.00000, +0.00000]" in d["reason"]


def test_train_cli_trains_and_publishes_a_pruned_neural_ease_kernel(warehouse, tmp_path, capsys):
    from vasp_model.evaluation.protocol import evaluate_recommender
    from vasp_model.recommenders.bundle import ModelBundle

    flags = ("--ease-neighbours", "5", "--ease-init", "closed_form", "--ab-resplit", "true")  # fresh halves per epoch
    assert _train(warehouse, tmp_path / "ckpt", *flags) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = layout.models_dir(warehouse, DATE)
    config = storage.read_json(f"{out}/{storage.MANIFEST}")["config"]
    assert config["model.ease_neighbours"] == "5" and config["train.ab_resplit"] == "True"
    bundle = ModelBundle.load(f"{out}/model", host_ease=True)
    features = load_features(warehouse, DATE)
    kernel = bundle.host_ease.kernel  # each item keeps 5 targets, never itself
    assert kernel.shape == (features.n_items, features.n_items) and kernel.nnz == 5 * features.n_items
    assert np.all(kernel.diagonal() == 0)
    widest = max(np.diff(m.indptr).max() for m in (features.train, features.validation.fold_in))
    assert bundle.model.ease_max_positives == widest
    # the published model scores (on the host) what the run measured
    split = features.test
    scored = evaluate_recommender(bundle, split.fold_in, split.holdout, features.popularity)
    assert scored["ndcg@100"] == pytest.approx(summary["test"]["vasp"]["ndcg@100"], abs=1e-6)


def test_train_cli_rejects_bad_config(warehouse):
    from vasp_model import cli

    assert cli.main(["train", "--warehouse", warehouse, "--date", DATE, "--dropout", "1.5", "--no-tracking"]) == 1
    assert cli.main(["train", "--warehouse", warehouse, "--date", "2020-01-01", "--no-tracking"]) == 1


def test_train_cli_records_where_the_model_came_from(warehouse, events, tmp_path, monkeypatch, capsys, caplog, recwarn):
    """Lineage through a tracked ``vasp train``: the input's digest (the sha256 of the events the build
    read) and the features partition reach the MLflow run (tags, datasets), the registered version's
    tags and the models manifest; the run is named for its date and names its code and Airflow run;
    the logged model carries an input example its predict accepts."""
    import hashlib
    import importlib.metadata
    import logging

    import mlflow

    from vasp_model import cli
    from vasp_model.data.features import features_digest, read_manifest

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("VASP_ARTIFACT_ROOT", f"file://{tmp_path}/artifacts")
    monkeypatch.setenv("VASP_GIT_COMMIT", "0123abc")
    airflow = {
        "AIRFLOW_CTX_DAG_ID": "vasp_nightly",
        "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__x",
        "AIRFLOW_CTX_TRY_NUMBER": "2",
    }
    for name, value in airflow.items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--epochs", "1", "--hidden", "12"]
    mlflow_log = logging.getLogger("mlflow")  # MLflow's loggers do not propagate: listen to it directly
    mlflow_log.addHandler(caplog.handler)
    try:
        assert cli.main([*argv, "--quiet", "--tracking-uri", uri, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    finally:
        mlflow_log.removeHandler(caplog.handler)
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]

    features_dir = os.path.abspath(layout.features_dir(warehouse, DATE))
    built = read_manifest(features_dir)  # what the build job wrote
    digest = hashlib.sha256(events.encode()).hexdigest()
    origin = {
        "input_uri": built["input"]["uri"],
        "input_digest": digest,
        "features_dir": features_dir,
        "features_digest": features_digest(built),
        "schema_version": str(layout.SCHEMA_VERSION),
    }
    assert built["input"]["sha256"] == digest

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == f"vasp-{DATE}"
    assert origin.items() <= run.data.tags.items()
    assert run.data.tags["vasp.package_version"] == importlib.metadata.version("vasp-pipeline")
    assert run.data.tags["mlflow.source.git.commit"] == "0123abc"
    assert {k: run.data.tags[k] for k in ("airflow.dag_id", "airflow.run_id", "airflow.try_number")} == dict(
        zip(("airflow.dag_id", "airflow.run_id", "airflow.try_number"), airflow.values(), strict=True)
    )
    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"input", "features"}
    for name, source, full in (
        ("input", origin["input_uri"], digest),
        ("features", features_dir, origin["features_digest"]),
    ):
        dataset, tags = datasets[name].dataset, {t.key: t.value for t in datasets[name].tags}
        assert json.loads(dataset.source)["uri"] == source and dataset.source_type == "local"
        assert dataset.digest == full[:36] and tags["sha256"] == full and tags["mlflow.data.context"] == "training"

    (version,) = client.search_model_versions(f"run_id='{run_id}'")
    assert origin.items() <= version.tags.items() and version.tags["date"] == DATE
    manifest = storage.read_json(f"{layout.models_dir(warehouse, DATE)}/{storage.MANIFEST}")
    assert manifest["features_manifest"] == origin

    # the input example: saved with the model, valid for its predict, and MLflow had nothing to warn about
    assert not [w for w in recwarn if "input example" in str(w.message)]
    assert "Validating input example" in caplog.text and "Failed to validate" not in caplog.text
    from vasp_model.mlops.tracking import mlflow_uri

    with mlflow_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/vasp/{version.version}")
    example = model.input_example
    assert list(example.columns) == ["item_ids"] and len(example["item_ids"][0]) == 2
    out = model.predict(example, params={"n": 3})
    assert len(out["item_ids"][0]) == 3 and not out["fallback"][0]
    assert not set(out["item_ids"][0]) & set(example["item_ids"][0])


def test_the_default_checkpoint_is_one_per_warehouse_date_and_config(tmp_path, monkeypatch):
    """Two runs of the same date and config on two warehouses never share a checkpoint (they ran at once
    and broke each other's files); the same warehouse by another path does."""
    from vasp_model.pipeline.training import default_checkpoint_dir

    monkeypatch.chdir(tmp_path)
    params = {"train.epochs": "(2,)"}
    one = default_checkpoint_dir("wh-a", "2026-01-03", params)
    assert one == default_checkpoint_dir(str(tmp_path / "wh-a"), "2026-01-03", params)
    others = {
        default_checkpoint_dir("wh-b", "2026-01-03", params),
        default_checkpoint_dir("s3://bucket/wh-a", "2026-01-03", params),
        default_checkpoint_dir("wh-a", "2026-01-04", params),
        default_checkpoint_dir("wh-a", "2026-01-03", {"train.epochs": "(3,)"}),
    }
    assert one not in others and len(others) == 4
    assert os.path.basename(one).startswith("train-2026-01-03-")
