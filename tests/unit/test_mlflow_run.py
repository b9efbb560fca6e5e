"""Helpers of the MLflow run of one training (vasp_model.mlops.tracking): the metrics' MLflow keys and
their way back, the config, the run's tags and plots, the scope of MLflow's global URIs."""

from __future__ import annotations

import json
import os

import pytest

from vasp_model.core.settings import ConfigError, build_config
from vasp_model.evaluation.metrics import METRIC_KEYS, model_test_metrics
from vasp_model.mlops import tracking

BUCKETS = {"recall@20_head": 0.5, "recall@20_mid": 0.25, "recall@20_tail": 0.125}
REPORT = {
    "test": {
        "vasp": {"ndcg@100": 0.4, "recall@20": 0.3, "recall@50": 0.5, "coverage@100": 0.6, **BUCKETS, "users": 7},
        "ease": {"ndcg@100": 0.38, "recall@20": 0.2, "recall@50": 0.4, "coverage@100": 0.2, **BUCKETS, "users": 7},
        "popularity": {"ndcg@100": 0.2, "recall@20": 0.1, "recall@50": 0.2, "coverage@100": 0.1, **BUCKETS, "users": 7},
    },
    "validation": {"vasp": {"ndcg@100": 0.41, "recall@20": 0.31, "users": 5}},
    "best_epoch": 3,
    "ease_validation_grid": {"100.0": 0.3},
    "note": "text is skipped",
}


def test_mlflow_keys_are_safe_and_come_back_as_the_report():
    logged = tracking.to_mlflow_metrics(REPORT)
    assert logged["test.vasp.ndcg_at_100"] == 0.4 and logged["test.ease.recall_at_20_tail"] == 0.125
    assert logged["best_epoch"] == 3.0 and logged["ease_validation_grid.100.0"] == 0.3
    assert not [k for k in logged if "@" in k] and "note" not in logged
    assert tracking.to_mlflow_metrics({"val_recall@20": 0.1, "a(b)": 1, "nan": float("nan")}) == {
        "val_recall_at_20": 0.1,
        "a_b_": 1.0,
    }
    back = tracking.from_mlflow_metrics(logged)
    assert back == {"test": REPORT["test"], "validation": REPORT["validation"]}
    assert set(model_test_metrics(back, "vasp")) == set(METRIC_KEYS)


def test_intervals_are_logged_under_readable_keys_and_read_back(tmp_path):
    import mlflow

    from vasp_model.evaluation.bootstrap import PairedDifference

    ndcg = PairedDifference(0.0075, 0.0007, 0.0145, 0.018, 603, 2000, 0).to_dict()
    recall = PairedDifference(-0.01, -0.03, 0.01, -0.05, 603, 2000, 0).to_dict()
    intervals = {"test": {"vasp-ease": {"ndcg@100": ndcg}, "vasp-popularity": {"recall@20": recall}}}
    logged = tracking.interval_metrics(intervals)
    assert logged == {
        "test_vasp_minus_ease_ndcg_at_100": 0.0075,
        "test_vasp_minus_ease_ndcg_at_100_low": 0.0007,
        "test_vasp_minus_ease_ndcg_at_100_high": 0.0145,
        "test_vasp_minus_popularity_recall_at_20": -0.01,
        "test_vasp_minus_popularity_recall_at_20_low": -0.03,
        "test_vasp_minus_popularity_recall_at_20_high": 0.01,
    }
    assert tracking.to_mlflow_metrics(logged) == logged  # already MLflow-safe
    # the report read back from the run's metrics is not confused by them
    both = {**tracking.to_mlflow_metrics(REPORT), **logged}
    assert tracking.from_mlflow_metrics(both) == {"test": REPORT["test"], "validation": REPORT["validation"]}

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    assert tracking.logged_interval(client, run_id, "ndcg@100") is None
    for key, value in logged.items():
        client.log_metric(run_id, key, value)
    assert tracking.logged_interval(client, run_id, "ndcg@100") == (0.0007, 0.0145)
    assert tracking.logged_interval(client, run_id, "recall@20", pair="vasp-popularity") == (-0.03, 0.01)
    assert tracking.logged_interval(client, run_id, "recall@50") is None


def test_model_test_metrics_reads_the_report_shape_only():
    assert model_test_metrics(REPORT, "ease")["ndcg@100"] == 0.38
    assert model_test_metrics(REPORT, "missing") == {}
    for not_a_report in ({"vasp": {"ndcg@100": 0.4}}, {"test.vasp.ndcg@100": 0.4}, [1]):
        with pytest.raises(ValueError, match="not a metrics report"):
            model_test_metrics(not_a_report, "vasp")


def test_logged_report_reads_metrics_json_else_the_run_metrics(tmp_path):
    import mlflow
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in tracking.to_mlflow_metrics(REPORT).items()])
    assert tracking.logged_report(client, run_id) == {"test": REPORT["test"], "validation": REPORT["validation"]}
    path = tmp_path / tracking.METRICS_FILE
    path.write_text(json.dumps(REPORT))
    client.log_artifact(run_id, str(path))
    assert tracking.logged_report(client, run_id) == REPORT


def test_tracking_config_defaults_env_and_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("VASP_HOME", str(tmp_path))
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    cfg = build_config(tracking.TrackingConfig, {})
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and cfg.gate_margin == 0.0
    assert cfg.experiment == "vasp" and cfg.registered_model == "vasp" and cfg.gate_metric == "ndcg@100"
    monkeypatch.setenv("VASP_GATE_MARGIN", "0.01")
    assert build_config(tracking.TrackingConfig, {"tracking_uri": "http://h:5000"}).gate_margin == 0.01
    assert build_config(tracking.TrackingConfig, {"gate_metric": "recall@50"}).gate_metric == "recall@50"
    with pytest.raises(ConfigError, match="gate_margin"):
        build_config(tracking.TrackingConfig, {"gate_margin": float("nan")})
    assert cfg.gate_require_significant is False
    monkeypatch.setenv("VASP_GATE_REQUIRE_SIGNIFICANT", "true")
    assert build_config(tracking.TrackingConfig, {}).gate_require_significant is True
    assert build_config(tracking.TrackingConfig, {"gate_require_significant": False}).gate_require_significant is False
    monkeypatch.setenv("VASP_GATE_REQUIRE_SIGNIFICANT", "maybe")
    with pytest.raises(ConfigError, match="VASP_GATE_REQUIRE_SIGNIFICANT='maybe' is not a valid bool"):
        build_config(tracking.TrackingConfig, {})
    monkeypatch.delenv("VASP_GATE_REQUIRE_SIGNIFICANT")
    with pytest.raises(ConfigError, match="gate_require_significant must be true or false"):
        build_config(tracking.TrackingConfig, {"gate_require_significant": "yes"})
    with pytest.raises(ConfigError, match="gate_metric must be one of ndcg@100, recall@20, recall@50"):
        build_config(tracking.TrackingConfig, {"gate_metric": "coverage@100"})
    # the EASE fallback's registered model: its own name, or empty (off)
    assert cfg.ease_registered_model == "vasp-ease"
    monkeypatch.setenv("VASP_EASE_REGISTERED_MODEL", "")
    assert build_config(tracking.TrackingConfig, {}).ease_registered_model == ""
    for bad in ("vasp", " vasp-ease"):
        with pytest.raises(ConfigError, match="ease_registered_model must be empty .* or a name other than"):
            build_config(tracking.TrackingConfig, {"ease_registered_model": bad})


def test_date_lookup():
    assert tracking.date_of("/wh/models/dt=2026-01-02/model") == "2026-01-02"
    assert tracking.date_of("/wh/models/latest") is None


def test_plots_are_written(tmp_path):
    history = [{"epoch": 1, "loss": 2.0, "val_ndcg@100": 0.1, "train_seconds": 3.0}, {"epoch": 2, "loss": 1.5}]
    curves = tracking.plot_training_curves(history, str(tmp_path / "curves.png"))
    buckets = tracking.plot_recall_by_bucket(REPORT, str(tmp_path / "buckets.png"))
    for path in (curves, buckets):
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert tracking.plot_training_curves([], str(tmp_path / "none.png")) is None
    assert tracking.plot_recall_by_bucket({"test": {}}, str(tmp_path / "none.png")) is None


def test_mlflow_uri_scope_restores_the_settings_it_found(monkeypatch, tmp_path):
    import mlflow

    for name in tracking.MLFLOW_URI_ENV:
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    store = f"sqlite:///{tmp_path}/a.db"
    try:
        with tracking.mlflow_uri(store):  # unset before: unset after, no variable left behind
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == store
        assert not mlflow.is_tracking_uri_set()
        assert not {name for name in tracking.MLFLOW_URI_ENV if name in os.environ}

        other, elsewhere = f"sqlite:///{tmp_path}/b.db", f"sqlite:///{tmp_path}/c.db"
        mlflow.set_tracking_uri(other)  # a registry that follows tracking keeps following it
        with tracking.mlflow_uri(store):
            pass
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == os.environ["MLFLOW_TRACKING_URI"] == other
        assert "MLFLOW_REGISTRY_URI" not in os.environ

        mlflow.set_registry_uri(elsewhere)  # an explicit registry is kept
        with tracking.mlflow_uri(store):
            pass
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (other, elsewhere)
        assert os.environ["MLFLOW_REGISTRY_URI"] == elsewhere
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)  # unsets the global, not the variable the setter wrote
        for name in tracking.MLFLOW_URI_ENV:
            os.environ.pop(name, None)


def test_runs_left_running_by_a_dead_process_of_this_host_are_marked_killed(tmp_path):
    import socket
    import subprocess
    import sys

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("vasp", artifact_location=f"file://{tmp_path / 'artifacts'}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = socket.gethostname()

    def running(name: str, host: str, pid: str, parent: str | None = None) -> str:
        tags = {"vasp.host": host, "vasp.pid": pid, **({"mlflow.parentRunId": parent} if parent else {})}
        return client.create_run(experiment, run_name=name, tags=tags).info.run_id

    abandoned = running("vasp-2026-03-01", here, dead.stdout.strip())
    child = running("trial-0", here, dead.stdout.strip(), parent=abandoned)
    live = running("vasp-2026-03-01", here, str(os.getpid()))  # this process: still running
    elsewhere = running("vasp-2026-03-01", "another-host", dead.stdout.strip())  # cannot tell: left alone
    other_date = running("vasp-2026-03-02", here, dead.stdout.strip())

    closed = tracking.close_abandoned_runs(client, experiment, "vasp-2026-03-01")

    assert sorted(closed) == sorted([abandoned, child])
    status = {run_id: client.get_run(run_id).info.status for run_id in (abandoned, child, live, elsewhere, other_date)}
    assert status == {
        abandoned: "KILLED",
        child: "KILLED",
        live: "RUNNING",
        elsewhere: "RUNNING",
        other_date: "RUNNING",
    }
