"""Pure helpers of the MLflow tracking/registry code (no MLflow store needed)."""

from __future__ import annotations

import pytest

from vasp_model.core.settings import ConfigError, build_config
from vasp_model.mlops import registry, tracking

METRICS = {
    "test": {
        "vasp": {"ndcg@100": 0.4, "recall@20": 0.3, "recall@20_head": 0.5, "recall@20_mid": 0.2, "recall@20_tail": 0.1},
        "ease": {"ndcg@100": 0.38, "recall@20_head": 0.55, "recall@20_mid": 0.15, "recall@20_tail": 0.05},
        "popularity": {"ndcg@100": 0.2, "recall@20_head": 0.4, "recall@20_mid": 0.0, "recall@20_tail": 0.0},
    },
    "best_epoch": 3,
    "note": "text is skipped",
}


def test_metric_keys_are_mlflow_safe():
    assert tracking.metric_key("test.vasp.ndcg@100") == "test.vasp.ndcg_at_100"
    assert tracking.metric_key("val_recall@20") == "val_recall_at_20"
    assert tracking.metric_key("a(b)") == "a_b_"


def test_flatten_and_model_metrics():
    flat = tracking.flatten_metrics(METRICS)
    assert flat["test.vasp.ndcg@100"] == 0.4 and flat["best_epoch"] == 3.0 and "note" not in flat
    assert tracking.model_test_metrics(METRICS, "ease")["ndcg@100"] == 0.38
    assert tracking.model_test_metrics(METRICS["test"], "vasp")["recall@20"] == 0.3  # {"vasp": {...}} shape
    assert tracking.model_test_metrics({"test.ease.ndcg@100": 0.1}, "ease") == {"ndcg@100": 0.1}
    assert tracking.model_test_metrics(METRICS, "missing") == {}


def test_tracking_config_defaults_env_and_validation(monkeypatch, tmp_path):
    monkeypatch.setenv("VASP_HOME", str(tmp_path))
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    cfg = build_config(tracking.TrackingConfig, {})
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and cfg.gate_margin == 0.0
    assert cfg.experiment == "vasp" and cfg.registered_model == "vasp"
    monkeypatch.setenv("VASP_GATE_MARGIN", "0.01")
    assert build_config(tracking.TrackingConfig, {"tracking_uri": "http://h:5000"}).gate_margin == 0.01
    with pytest.raises(ConfigError, match="gate_margin"):
        build_config(tracking.TrackingConfig, {"gate_margin": float("nan")})
    with pytest.raises(ConfigError, match="gate_metric"):
        build_config(tracking.TrackingConfig, {"gate_metric": "auc"})


def test_date_and_fingerprint_lookup():
    assert tracking.date_of("/wh/models/dt=2026-01-02/model") == "2026-01-02"
    assert tracking.date_of("/wh/models/latest") is None
    assert tracking.fingerprint_of({"input_fingerprint": "abc"}) == "abc"
    assert tracking.fingerprint_of({"input": {"fingerprint": "xyz"}}) == "xyz"
    assert tracking.fingerprint_of(None) == ""


def test_plots_are_written(tmp_path):
    history = [{"epoch": 1, "loss": 2.0, "val_ndcg@100": 0.1, "train_seconds": 3.0}, {"epoch": 2, "loss": 1.5}]
    curves = tracking.plot_training_curves(history, str(tmp_path / "curves.png"))
    buckets = tracking.plot_recall_by_bucket(METRICS, str(tmp_path / "buckets.png"))
    for path in (curves, buckets):
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert tracking.plot_training_curves([], str(tmp_path / "none.png")) is None
    assert tracking.plot_recall_by_bucket({"test": {}}, str(tmp_path / "none.png")) is None


def test_parse_model_uri():
    assert registry.parse_model_uri("models:/vasp@champion") == ("vasp", "champion", None)
    assert registry.parse_model_uri("models:/vasp/7") == ("vasp", None, "7")
    with pytest.raises(ValueError, match="version number or an @alias"):
        registry.parse_model_uri("models:/vasp/latest")
    with pytest.raises(ValueError, match="not a registry URI"):
        registry.parse_model_uri("runs:/abc/model")


def test_gate_decision_json_is_one_line():
    d = registry.GateDecision(
        "2026-01-01", "rejected", False, "2", "1", "1", "does not beat EASE", scores={"ease": 0.3}
    )
    line = d.to_json()
    assert "\n" not in line and '"action": "rejected"' in line and '"ease": 0.3' in line


def test_mlflow_uri_scope_restores_the_settings_it_found(monkeypatch, tmp_path):
    import os

    import mlflow

    for name in registry.MLFLOW_URI_ENV:
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    store = f"sqlite:///{tmp_path}/a.db"
    try:
        with registry.mlflow_uri(store) as client:  # unset before: unset after, no variable left behind
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == client.tracking_uri == store
        assert not mlflow.is_tracking_uri_set()
        assert not {name for name in registry.MLFLOW_URI_ENV if name in os.environ}

        other, elsewhere = f"sqlite:///{tmp_path}/b.db", f"sqlite:///{tmp_path}/c.db"
        mlflow.set_tracking_uri(other)  # a registry that follows tracking keeps following it
        with registry.mlflow_uri(store):
            pass
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == os.environ["MLFLOW_TRACKING_URI"] == other
        assert "MLFLOW_REGISTRY_URI" not in os.environ

        mlflow.set_registry_uri(elsewhere)  # an explicit registry is kept
        with registry.mlflow_uri(store):
            pass
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (other, elsewhere)
        assert os.environ["MLFLOW_REGISTRY_URI"] == elsewhere
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
