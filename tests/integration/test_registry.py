"""Tracking + registry promotion against the default SQLite store and a real ``mlflow server``.

One tiny model is trained once (synthetic data with a real signal). Its "sabotaged" twin (same
network, shuffled vocabulary) ranks far worse, which makes the champion comparisons certain; it
is published with its own metrics (scored on its date's test users), so it is below EASE. The
EASE gate is driven by the margin: -1 always passes, +1 never can (nDCG <= 1).

Dates: D1 (vocabulary A) sabotaged -> first champion (margin -1); D2 rejected vs EASE; D3
(vocabulary B, some items renamed, so the champion's vocabulary differs) good -> beats the
re-scored champion, also when the paired interval must clear 0 (--require-significant); D4
sabotaged -> below EASE at margin 0, and at margin -1 loses to the champion, the interval of the
difference below 0; rollback of D3 -> champion back to D1's version.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from features_fixture import built_features, copy_features, events_csv
from registry_helpers import mlflow_server, report_of, sabotaged, save_model_outputs, synthetic_pairs

from vasp_model.cli import main as cli_main

D1, D2, D3, D4 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """A warehouse with features for D1..D4 (built by the build job) and model outputs (good /
    sabotaged) for each date."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vasp_model.core.config import make_config
    from vasp_model.data.features import load_features
    from vasp_model.train.trainer import train

    root = tmp_path_factory.mktemp("registry")
    warehouse = str(root / "warehouse")
    input_a = events_csv(*synthetic_pairs(seed=0))
    renamed = {f"i{i}": f"new{i}" for i in range(100, 120)}  # D3/D4: 20 tail items renamed
    input_b = events_csv(*synthetic_pairs(seed=0, rename=renamed))
    manifests = {}
    for date, text in ((D1, input_a), (D2, input_a), (D3, input_b), (D4, input_b)):
        built, manifests[date] = built_features(spark, tmp_path_factory, text, date, ab_copies=2)
        copy_features(built, date, warehouse)
    feats_a, feats_b = load_features(warehouse, D1), load_features(warehouse, D3)
    # The tiny preset's learning rate (1e-3) learns nothing in its 2 epochs here (below popularity, no
    # better than the sabotaged twin); 1e-2 learns the clusters, which the champion comparisons need.
    result = train(feats_a, make_config("tiny", train_overrides={"learning_rates": (1e-2,)}), verbose=0)
    bad = sabotaged(result.bundle)
    outputs = {
        D1: (bad, report_of(bad, feats_a, result.metrics)),
        D2: (result.bundle, result.metrics),
        D3: (result.bundle, result.metrics),
        D4: (bad, report_of(bad, feats_b, result.metrics)),
    }
    for date, (bundle, metrics) in outputs.items():
        save_model_outputs(warehouse, date, bundle, metrics, result.history)
    # what each date's training returned: the shared training, with that date's model's metrics
    results = {date: dataclasses.replace(result, metrics=metrics) for date, (_, metrics) in outputs.items()}
    return {"root": root, "warehouse": warehouse, "result": result, "results": results, "manifests": manifests}


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.service)])
def store(request, world, tmp_path, monkeypatch):
    """(tracking URI, env) for a fresh default-style SQLite store or a fresh real mlflow server."""
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    monkeypatch.delenv("VASP_ARTIFACT_ROOT", raising=False)
    if request.param == "sqlite":
        from vasp_model.core import defaults

        uri = defaults.default_tracking_uri()  # sqlite under $VASP_HOME, artifacts under $VASP_HOME/mlartifacts
        assert uri.startswith("sqlite:///") and str(tmp_path) in uri
        yield uri
    else:
        with mlflow_server(str(tmp_path / "server")) as url:
            yield url


def _log_training(uri: str, world, date: str) -> str:
    from vasp_model.data import layout
    from vasp_model.mlops.tracking import TrainingTracker

    result = world["results"][date]
    with TrainingTracker(uri, "vasp") as tracker:
        tracker.log_config({"model.hidden": 16, "train.epochs": "(2,)"})
        callback = tracker.callback()
        for row in result.history:
            callback.on_epoch_end(row["epoch"] - 1, {k: v for k, v in row.items() if k != "epoch"})
        run_id = tracker.log_result(
            result, layout.models_dir(world["warehouse"], date), layout.features_dir(world["warehouse"], date)
        )
    return run_id


def _promote(capsys, uri, world, date, *extra) -> dict:
    argv = ["promote", "--date", date, "--warehouse", world["warehouse"], "--tracking-uri", uri, *extra]
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("vasp").aliases.items()}


def test_tracking_register_promote_gate_rollback(store, world, capsys, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(store, registry_uri=store)
    runs = {date: _log_training(store, world, date) for date in (D1, D2, D3, D4)}

    # -- tracking: params, per-epoch metrics, final metrics, artifacts, a registered version per run
    run = client.get_run(runs[D1])
    assert run.data.params["model.hidden"] == "16"
    assert run.data.tags["date"] == D1
    history = client.get_metric_history(runs[D1], "val_ndcg_at_100")
    assert [m.step for m in history] == [0, 1]
    assert run.data.metrics["test.vasp.ndcg_at_100"] == pytest.approx(
        world["results"][D1].metrics["test"]["vasp"]["ndcg@100"]
    )
    assert "test.ease.recall_at_20" in run.data.metrics and "test.popularity.ndcg_at_100" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(runs[D1])}
    assert {"metrics.json", "history.json", "build_manifest.json", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(runs[D1], "plots")} == {
        "plots/training_curves.png",
        "plots/recall20_by_popularity.png",
    }
    versions = sorted(client.search_model_versions("name='vasp'"), key=lambda v: int(v.version))
    assert [v.tags["date"] for v in versions] == [D1, D2, D3, D4]
    assert [v.run_id for v in versions] == [runs[d] for d in (D1, D2, D3, D4)]
    v1, v2, v3, v4 = (str(v.version) for v in versions)
    assert float(versions[0].tags["test.ease.ndcg_at_100"]) > 0
    ndcg = [float(v.tags["test.vasp.ndcg_at_100"]) for v in versions]  # each version its own figures
    assert ndcg[0] < ndcg[1] == ndcg[2] and ndcg[3] < ndcg[2]

    # The logged model is a pyfunc that carries the vocabulary and loads in safe mode.
    from vasp_model.mlops.tracking import mlflow_uri

    with mlflow_uri(store):
        model = mlflow.pyfunc.load_model(f"models:/vasp/{v3}")
        logged = mlflow.artifacts.download_artifacts(f"models:/vasp/{v3}", dst_path=str(tmp_path / "logged"))
    assert os.path.exists(
        os.path.join(logged, "code", "vasp_model", "mlops", "pyfunc.py")
    )  # code_paths: self-contained
    import pandas as pd

    out = model.predict(pd.DataFrame({"item_ids": [["i1", "i2", "nope"], ["nope"]]}), params={"n": 5})
    assert [len(x) for x in out["item_ids"]] == [5, 5] and list(out["fallback"]) == [False, True]
    assert not {"i1", "i2"} & set(out["item_ids"][0])

    # -- D1: first night, no champion -> the EASE gate alone decides (margin -1 passes)
    d = _promote(capsys, store, world, D1, "--margin", "-1")
    assert d["action"] == "promoted" and d["champion_after"] == v1 and "no champion yet" in d["reason"]
    assert d["scores"]["candidate_logged"] == pytest.approx(ndcg[0], abs=1e-6)
    assert d["scores"]["candidate_logged"] < d["scores"]["ease"], d  # it passed only by the margin
    assert _aliases(client) == {"champion": v1}
    # idempotent: same decision, no alias churn, no new version
    d = _promote(capsys, store, world, D1, "--margin", "-1")
    assert d["action"] == "already_champion" and d["promoted"] and _aliases(client) == {"champion": v1}

    # -- D2: fails the EASE gate (margin +1 is impossible); champion stays, reason recorded
    d = _promote(capsys, store, world, D2, "--margin", "1")
    assert d["action"] == "rejected" and not d["promoted"] and "does not beat EASE" in d["reason"]
    assert _aliases(client) == {"champion": v1}
    assert client.get_model_version("vasp", v2).tags["gate.decision"] == "rejected"
    assert "does not beat EASE" in client.get_model_version("vasp", v2).tags["gate.reason"]
    d = _promote(capsys, store, world, D2, "--margin", "1")  # same rule, same champion: recorded decision
    assert d["action"] == "unchanged" and not d["promoted"] and _aliases(client) == {"champion": v1}

    # -- D3: beats EASE (margin -1) and the champion re-scored on D3's users (vocabularies differ), with
    # the lower bound of the paired interval of candidate - champion above 0
    d = _promote(capsys, store, world, D3, "--margin", "-1", "--require-significant")
    assert d["action"] == "promoted" and d["require_significant"], d
    assert d["scores"]["candidate"] > d["scores"]["champion"]
    assert 0 < d["scores"]["candidate_minus_champion_low"] < d["scores"]["candidate"] - d["scores"]["champion"]
    assert "candidate_minus_champion interval [+" in d["reason"]
    assert _aliases(client) == {"champion": v3, "previous": v1}

    # -- D4: the sabotaged model's own metrics are below EASE; at margin -1 it loses to the re-scored champion
    d = _promote(capsys, store, world, D4, "--margin", "0")
    assert d["action"] == "rejected" and "does not beat EASE" in d["reason"], d
    assert d["scores"]["candidate_logged"] < d["scores"]["ease"] and "champion" not in d["scores"]
    d = _promote(capsys, store, world, D4, "--margin", "-1")  # another rule: the gate runs again
    assert d["action"] == "rejected" and "does not beat champion v" + v3 in d["reason"], d
    assert d["scores"]["candidate"] < d["scores"]["champion"]
    assert d["scores"]["candidate_minus_champion_high"] < 0  # recorded though not required
    assert _aliases(client) == {"champion": v3, "previous": v1}
    # idempotent: the recorded decision comes back, nothing moves
    d = _promote(capsys, store, world, D4, "--margin", "-1")
    assert d["action"] == "unchanged" and not d["promoted"] and "rejected" in d["reason"]
    assert _aliases(client) == {"champion": v3, "previous": v1}

    # -- rollback of D3: champion back to v1; D1 had no previous, so "previous" goes away
    d = _promote(capsys, store, world, D3, "--rollback")
    assert d["action"] == "rolled_back" and d["champion_after"] == v1
    assert _aliases(client) == {"champion": v1}
    d = _promote(capsys, store, world, D3, "--rollback")
    assert d["action"] == "unchanged" and _aliases(client) == {"champion": v1}
    # re-running D3's promotion does not undo the rollback
    d = _promote(capsys, store, world, D3, "--margin", "-1")
    assert d["action"] == "unchanged" and _aliases(client) == {"champion": v1}

    assert len(client.search_model_versions("name='vasp'")) == 4


def test_run_and_version_record_the_build_input_digest(store, world):
    """Lineage: a training run and its model version are tagged with the input digest that the build
    job recorded in the features manifest (the sha256 of the input file) and with the partition."""
    import mlflow

    from vasp_model.data import layout

    client = mlflow.MlflowClient(store, registry_uri=store)
    run_id = _log_training(store, world, D1)
    expected = world["manifests"][D1]["input"]["sha256"]
    assert len(expected) == 64
    tags = client.get_run(run_id).data.tags
    assert tags["input_digest"] == expected
    assert tags["features_dir"] == os.path.abspath(layout.features_dir(world["warehouse"], D1))
    (version,) = client.search_model_versions(f"run_id='{run_id}'")
    assert version.tags["input_digest"] == expected and version.tags["features_digest"] == tags["features_digest"]


def test_promote_without_candidate_is_a_clear_error(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))  # a fresh, empty registry
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    assert cli_main(["promote", "--date", D1, "--warehouse", world["warehouse"]]) == 1
    assert f"no version of registered model 'vasp' is tagged date={D1}" in capsys.readouterr().err
    assert cli_main(["promote", "--date", "2026-03-09", "--warehouse", world["warehouse"]]) == 1  # no features either
    assert "features for 2026-03-09 are not published" in capsys.readouterr().err
