"""Never an empty night: while VASP has no champion, the fallback serves, through the real registry
(a SQLite store), the ``vasp promote`` command and the Spark scoring job.

One tiny model is trained once on synthetic data with a real signal; the train stage's
``write_outputs`` publishes its outputs (the VASP bundle, the EASE the training fitted, metrics) for
each date, which is logged as a training run. D1: the gate cannot pass (margin 1: nDCG <= 1), so
the date's EASE becomes champion of its own registered model and the lists come from it. D2: VASP
passes (margin -1) and serves; EASE is not registered again. Popularity is the last resort: with
the EASE fallback off, and (D3) with an EASE that ranks below popularity (a sabotaged twin: its
vocabulary shuffled, its metrics its own).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv
from registry_helpers import synthetic_pairs

from vasp_model.cli import main as cli_main
from vasp_model.data import layout, storage
from vasp_model.pipeline.checks import read_table

pytestmark = pytest.mark.slow

D1, D2, D3 = "2026-03-01", "2026-03-02", "2026-03-03"
TOP_N = 15


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """A warehouse with the same features for D1..D3 (built once by the build job: test_registry's D1
    build, shared within a session) and each date's training outputs (D3: the EASE sabotaged, with its
    own metrics)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vasp_model.core.config import make_config
    from vasp_model.data.features import load_features
    from vasp_model.mlops.registry import rescore
    from vasp_model.pipeline.training import write_outputs
    from vasp_model.recommenders.bundle import EaseBundle
    from vasp_model.train.trainer import train

    warehouse = str(tmp_path_factory.mktemp("fallback") / "warehouse")
    text = events_csv(*synthetic_pairs(seed=0))  # test_registry's input of D1: one build per session
    copy_features(built_features(spark, tmp_path_factory, text, D1, ab_copies=2)[0], D1, warehouse)
    for date in (D2, D3):
        shutil.copytree(layout.features_dir(warehouse, D1), layout.features_dir(warehouse, date))
    features = load_features(warehouse, D1)
    # 1e-2: the tiny preset's own rate learns nothing in its 2 epochs here (see test_registry)
    result = train(features, make_config("tiny", train_overrides={"learning_rates": (1e-2,)}), verbose=0)
    ease = result.ease
    bad = EaseBundle(ease.B, ease.item_ids[np.random.default_rng(1).permutation(ease.n_items)], ease.popularity)
    report = json.loads(json.dumps(result.metrics, default=float))
    report["test"]["ease"] = rescore(bad, features.item_ids, features.test, features.popularity)
    results = {D1: result, D2: result, D3: dataclasses.replace(result, ease=bad, metrics=report)}
    for date, outputs in results.items():
        final = layout.models_dir(warehouse, date)
        staging = storage.staging_dir(final)
        write_outputs(outputs, features, storage.local_path(staging), "all")
        storage.publish(staging, final, {"date": date})
    return {"warehouse": warehouse, "results": results}


def _log_training(uri: str, world, date: str) -> str:
    from vasp_model.mlops.tracking import TrainingTracker

    wh = world["warehouse"]
    with TrainingTracker(uri, "vasp") as tracker:
        return tracker.log_result(world["results"][date], layout.models_dir(wh, date), layout.features_dir(wh, date))


def _promote(capsys, uri, world, date, *extra) -> dict:
    argv = ["promote", "--date", date, "--warehouse", world["warehouse"], "--tracking-uri", uri, *extra]
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _score(spark, uri, world, date, **options) -> tuple[dict, dict[str, list[str]]]:
    """Score ``date`` with the job; (its manifest, each user's published list in rank order)."""
    from vasp_jobs.score import score

    manifest = score(spark, date, world["warehouse"], tracking_uri=uri, top_n=TOP_N, **options)
    recs = read_table(layout.recommendations_dir(world["warehouse"], date))
    assert set(recs["model_version"]) == {manifest["model_version"]}
    lists = {u: rows.sort_values("rank").item_id.tolist() for u, rows in recs.groupby("user_id")}
    return manifest, lists


def _expected_lists(bundle, world, date) -> dict[str, list[str]]:
    """Every user's list from ``bundle`` straight from the features (input: positives; left out: consumed)."""
    features = layout.features_dir(world["warehouse"], date)
    users = read_table(f"{features}/users", columns=["user_idx", "user_id"]).sort_values("user_idx")

    def by_user(table: str) -> list[list[str]]:
        rows = read_table(f"{features}/{table}", columns=["user_idx", "item_id"]).groupby("user_idx").item_id
        groups = {u: [str(i) for i in items] for u, items in rows}
        return [groups.get(u, []) for u in users.user_idx]

    inputs, consumed = by_user("interactions"), by_user("consumed")

    def flat(lists):
        return np.cumsum([0, *map(len, lists)]), sum(lists, [])

    rec = bundle.recommend_flat(*flat(inputs), TOP_N, exclude=flat(consumed))
    return {str(u): [i for i in row if i is not None] for u, row in zip(users.user_id, rec.item_ids, strict=True)}


def _validate(uri: str, world, date: str) -> dict:
    """The DAG's check of the published lists (every user, n items, none excluded, the model's vocabulary)."""
    from vasp_model.pipeline.checks import validate
    from vasp_model.pipeline.plan import Plan

    plan = Plan(date, "unused", False, world["warehouse"], uri, "tiny", TOP_N, 3.5, 5, "all", 1, 1)
    return validate(plan)


def _aliases(client, name: str) -> dict[str, str]:
    from vasp_model.mlops.registry import aliases_of

    return aliases_of(client, name)


def test_no_champion_serves_the_ease_fallback_until_vasp_wins(store, world, spark, capsys, tmp_path):
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(store, registry_uri=store)
    run_d1 = _log_training(store, world, D1)
    ease = world["results"][D1].ease

    # -- D1: VASP cannot pass; no champion, so the date's EASE is gated into vasp-ease and serves
    d = _promote(capsys, store, world, D1, "--margin", "1")
    assert (d["action"], d["promoted"], d["champion_after"]) == ("rejected", False, None)
    assert d["serving"] == {"kind": "ease", "registered_model": "vasp-ease", "version": "1"}
    assert "does not beat EASE" in d["reason"] and "no champion: serving fallback ease v1" in d["reason"]
    assert "beats popularity" in d["reason"], d["reason"]
    assert _aliases(client, "vasp") == {} and _aliases(client, "vasp-ease") == {"champion": "1"}
    (version,) = client.search_model_versions("name='vasp-ease'")
    assert (version.run_id, version.tags["date"], version.tags["gate.decision"]) == (run_d1, D1, "promoted")
    logged = world["results"][D1].metrics["test"]
    assert d["reason"].count(f"{logged['ease']['ndcg@100']:.5f} > {logged['popularity']['ndcg@100']:.5f}") == 1

    # the registered EASE is a pyfunc of its own that loads anywhere and ranks as the trained EASE
    from vasp_model.mlops.tracking import mlflow_uri

    with mlflow_uri(store):
        model = mlflow.pyfunc.load_model("models:/vasp-ease/1")
    out = model.predict(pd.DataFrame({"item_ids": [["i1", "i2", "nope"], ["nope"]]}), params={"n": 5})
    assert list(out["item_ids"][0]) == list(ease.recommend_ids([["i1", "i2"]], 5).item_ids[0])
    assert list(out["fallback"]) == [False, True]

    # a rerun decides the same and registers nothing new
    again = _promote(capsys, store, world, D1, "--margin", "1")
    assert again["serving"] == d["serving"] and again["action"] == "unchanged"
    assert len(client.search_model_versions("name='vasp-ease'")) == 1

    # the lists of D1 come from the EASE fallback, and pass the night's checks
    manifest, lists = _score(spark, store, world, D1)
    assert manifest["serving"] == {"kind": "ease", "registered_model": "vasp-ease", "version": "1"}
    assert manifest["model_version"] == "vasp-ease/1" and manifest["model_resolved_uri"] == "models:/vasp-ease/1"
    assert lists == _expected_lists(ease, world, D1)
    assert _validate(store, world, D1)["model_version"] == "vasp-ease/1"

    # -- D2: VASP wins and serves; the fallback is not used (nor registered) any more
    _log_training(store, world, D2)
    d = _promote(capsys, store, world, D2, "--margin", "-1")
    assert (d["action"], d["champion_after"]) == ("promoted", "2") and "no champion:" not in d["reason"]
    assert d["serving"] == {"kind": "vasp", "registered_model": "vasp", "version": "2"}
    assert len(client.search_model_versions("name='vasp-ease'")) == 1
    manifest, lists = _score(spark, store, world, D2)
    assert manifest["serving"] == {"kind": "vasp", "registered_model": "vasp", "version": "2"}
    assert manifest["model_version"] == "2" and _validate(store, world, D2)["users"] == len(lists)


def test_popularity_is_the_last_resort(store, world, spark, capsys):
    import mlflow

    from vasp_model.data.features import load_items
    from vasp_model.recommenders.bundle import PopularityBundle

    client = mlflow.MlflowClient(store, registry_uri=store)
    popularity = PopularityBundle(*load_items(world["warehouse"], D1))
    # a fresh store: the lists another test published here name its store's versions (and would make D1 past)
    shutil.rmtree(f"{world['warehouse']}/recommendations", ignore_errors=True)

    # the EASE fallback off: a losing first candidate leaves popularity to serve
    _log_training(store, world, D1)
    d = _promote(capsys, store, world, D1, "--margin", "1", "--ease-registered-model", "")
    assert d["serving"] == {"kind": "popularity", "registered_model": None, "version": None}
    assert d["reason"].endswith("no champion: serving popularity (the EASE fallback is off)")
    assert [m.name for m in client.search_registered_models()] == ["vasp"]
    manifest, lists = _score(spark, store, world, D1, ease_model="")
    assert manifest["serving"]["kind"] == "popularity" and manifest["model_version"] == "popularity"
    assert lists == _expected_lists(popularity, world, D1)
    assert _validate(store, world, D1)["model_version"] == "popularity"

    # an EASE below popularity is registered, rejected by its gate, and popularity serves
    _log_training(store, world, D3)
    d = _promote(capsys, store, world, D3, "--margin", "1")
    assert d["serving"] == {"kind": "popularity", "registered_model": None, "version": None}
    assert "no champion: serving popularity (does not beat popularity" in d["reason"], d["reason"]
    (version,) = client.search_model_versions("name='vasp-ease'")
    assert version.tags["gate.decision"] == "rejected" and _aliases(client, "vasp-ease") == {}
    manifest, lists = _score(spark, store, world, D3)
    assert manifest["serving"]["kind"] == "popularity"
    assert lists == _expected_lists(PopularityBundle(*load_items(world["warehouse"], D3)), world, D3)
