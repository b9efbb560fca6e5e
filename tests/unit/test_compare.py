"""``vasp compare``: two trainings' per-user tables paired by user id, pooled over pairs, with intervals."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_model.cli import main
from vasp_model.data.layout import PER_USER_METRICS
from vasp_model.evaluation.bootstrap import paired_bootstrap, pool

METRICS = ("ndcg@100", "recall@20", "recall@50")


def write_table(directory, users, values, models=("vasp", "ease"), split="test") -> str:
    """A per-user table as ``vasp train`` writes it: for each model, ``values[model]`` (one row per user, one
    column per metric), under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = {"split": [], "user_id": [], "model": [], **{m: [] for m in METRICS}}
    for model in models:
        for user, row in zip(users, values[model], strict=True):
            rows["split"].append(split)
            rows["user_id"].append(str(user))
            rows["model"].append(model)
            for m, v in zip(METRICS, row, strict=True):
                rows[m].append(float(v))
    pq.write_table(pa.table(rows), directory / PER_USER_METRICS)
    return str(directory)


def compare_json(capsys, *args) -> dict:
    assert main(["compare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_users_are_paired_by_id_and_those_of_one_side_only_are_counted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a_vals, b_vals = rng.random((5, 3)), rng.random((5, 3))
    a = write_table(tmp_path / "a", [1, 2, 3, 4, 5], {"vasp": a_vals, "ease": a_vals * 0})
    b = write_table(tmp_path / "b", [7, 6, 5, 4, 3], {"vasp": b_vals, "ease": b_vals * 0})  # 3, 4, 5 in both
    result = compare_json(capsys, a, b)
    assert (result["paired_users"], result["only_a"], result["only_b"]) == (3, 2, 2)
    by_user_b = {u: row for u, row in zip([7, 6, 5, 4, 3], b_vals, strict=True)}
    expected = np.mean([a_vals[u - 1] - by_user_b[u] for u in (3, 4, 5)], axis=0)
    for j, m in enumerate(METRICS):
        figures = result["metrics"][m]
        assert figures["diff"] == pytest.approx(expected[j])
        assert figures["a"] - figures["b"] == pytest.approx(expected[j])
        assert figures["low"] <= figures["diff"] <= figures["high"] and figures["users"] == 3

    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert f"A: vasp of {a}" in out and f"B: vasp of {b}" in out
    assert "test users paired: 3 over 1 pair(s); left out: 2 only in A, 2 only in B" in out
    assert f"ndcg@100{'':<6}{np.mean(a_vals[2:, 0]):>9.4f}" in out


def test_a_run_against_its_own_baseline_and_pairs_pooled(tmp_path, capsys):
    rng = np.random.default_rng(1)
    values = [{"vasp": rng.random((4, 3)), "ease": rng.random((4, 3))} for _ in range(2)]
    runs = [write_table(tmp_path / f"split{i}", [10, 11, 12, 13], v) for i, v in enumerate(values)]
    result = compare_json(capsys, runs[0], runs[0], runs[1], runs[1], "--model-b", "ease", "--resamples", "500")
    pooled = [pool([{m: v[model][:, j] for j, m in enumerate(METRICS)} for v in values]) for model in ("vasp", "ease")]
    expected = paired_bootstrap(*pooled, resamples=500)
    assert result["paired_users"] == 8 and result["model_b"] == "ease"
    for m in METRICS:
        assert result["metrics"][m]["low"] == pytest.approx(expected[m].low)
        assert result["metrics"][m]["high"] == pytest.approx(expected[m].high)
        assert result["metrics"][m]["diff"] == pytest.approx(expected[m].diff)


def test_bad_input_is_one_line(tmp_path, capsys):
    a = write_table(tmp_path / "a", [1, 2], {"vasp": np.ones((2, 3)), "ease": np.zeros((2, 3))})
    other = write_table(tmp_path / "other", [8, 9], {"vasp": np.ones((2, 3)), "ease": np.zeros((2, 3))})
    pq.write_table(pa.table({"user_id": ["1"]}), tmp_path / "not_per_user.parquet")
    empty = write_table(tmp_path / "empty", [1, 2], {"vasp": np.full((2, 3), np.nan), "ease": np.zeros((2, 3))})
    cases = {
        (str(tmp_path / "missing"), a): f"no {PER_USER_METRICS} at {tmp_path / 'missing'}",
        (a,): "runs come in pairs (A B [A2 B2 ...]), got 1",
        (a, a, "--model", "als"): "has no model 'als' on test (has: ease, vasp)",
        (a, a, "--split", "given"): "has no 'given' users (has: test)",
        (a, a, "--metrics", "ndcg@20"): "has no metric ndcg@20 (has: ndcg@100, recall@20, recall@50)",
        (a, other): "the two sides share no user: nothing to compare",
        (empty, a): "none of the 2 paired users has every metric on both sides: nothing to compare",
        (str(tmp_path / "not_per_user.parquet"), a): "is not a per-user metrics table: no column split, model",
    }
    for args, message in cases.items():
        assert main(["compare", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vasp compare: error: ") and message in err and "\n" not in err


def test_an_mlflow_run_is_read_by_its_run_uri(tmp_path, capsys):
    import mlflow

    from vasp_model.mlops.tracking import mlflow_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    values = {"vasp": np.full((3, 3), 0.5), "ease": np.full((3, 3), 0.25)}
    logged = write_table(tmp_path / "logged", [1, 2, 3], values)
    client.log_artifact(run_id, f"{logged}/{PER_USER_METRICS}")
    local = write_table(tmp_path / "local", [1, 2, 3], {"vasp": np.full((3, 3), 0.4), "ease": values["ease"]})
    result = compare_json(capsys, f"runs:/{run_id}", local, "--tracking-uri", uri)
    assert result["paired_users"] == 3 and result["metrics"]["ndcg@100"]["diff"] == pytest.approx(0.1)

    assert main(["compare", "runs:/0123456789abcdef", local, "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vasp compare: error: no {PER_USER_METRICS} in runs:/0123456789abcdef at {uri}")
    assert "\n" not in err

    # a registered version, by number or alias, is read from the run that trained it
    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("m", "champion", "1")
    for ref in ("models:/m/1", "models:/m@champion"):
        result = compare_json(capsys, ref, local, "--tracking-uri", uri)
        assert result["paired_users"] == 3 and result["metrics"]["ndcg@100"]["diff"] == pytest.approx(0.1)
    # a version of the EASE fallback (its run's logged model "ease") is read as the table's EASE, unless told
    logged = client.create_logged_model(experiment, name="ease", source_run_id=run_id)
    client.create_registered_model("m-ease")
    with mlflow_uri(uri):  # a local registry looks a models:/m-... source up through MLflow's global URI
        client.create_model_version("m-ease", f"models:/{logged.model_id}", run_id=run_id, model_id=logged.model_id)
    client.create_model_version("m-ease", f"runs:/{run_id}/ease", run_id=run_id)  # registered from a run's path
    for ref in ("models:/m-ease/1", "models:/m-ease/2"):
        result = compare_json(capsys, ref, local, "--tracking-uri", uri)
        assert (result["model_a"], result["model_b"]) == ("ease", "vasp")
        assert result["metrics"]["ndcg@100"]["diff"] == pytest.approx(0.25 - 0.4)
        result = compare_json(capsys, ref, local, "--model", "vasp", "--tracking-uri", uri)
        assert (result["model_a"], result["model_b"]) == ("vasp", "vasp")
        assert result["metrics"]["ndcg@100"]["diff"] == pytest.approx(0.1)
    assert main(["compare", "models:/m-ease/1", local, "models:/m/1", local, "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's download bars
    assert err == "vasp compare: error: A's runs name different models (ease, vasp): say which with --model/--model-b"

    for ref, message in (
        ("models:/m@previous", "registered model 'm' has no version with alias 'previous'"),
        ("models:/m/7", f"no {PER_USER_METRICS} in models:/m/7 at {uri}"),
        ("models:/m/latest", "must name a version number or an @alias"),
    ):
        assert main(["compare", ref, local, "--tracking-uri", uri]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vasp compare: error: ") and message in err and "\n" not in err, err
