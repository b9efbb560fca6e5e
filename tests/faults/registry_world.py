"""A small registry world for the model faults: features of two dates built by the build job, one
tiny training, and its outputs published per date (D1: a sabotaged twin that ranks badly, D2: the
good model), registered into a store by :func:`register` as ``vasp train`` does."""

from __future__ import annotations

import dataclasses
import hashlib
import os

from features_fixture import built_features, copy_features, events_csv
from integration.registry_helpers import report_of, sabotaged, save_model_outputs, synthetic_pairs

D1, D2 = "2026-05-01", "2026-05-02"


_WORLD: dict[str, dict] = {}


def build_world(spark, tmp_path_factory) -> dict:
    """``{"warehouse", "results"}``: features and models/dt=D for D1 (sabotaged) and D2 (good); built
    once per test session (tests only read it)."""
    if "world" not in _WORLD:
        _WORLD["world"] = _build(spark, tmp_path_factory)
    return _WORLD["world"]


def _build(spark, tmp_path_factory) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vasp_model.core.config import make_config
    from vasp_model.data.features import load_features
    from vasp_model.train.trainer import train

    warehouse = str(tmp_path_factory.mktemp("model-faults") / "warehouse")
    text = events_csv(*synthetic_pairs(seed=0))
    for date in (D1, D2):
        built, _ = built_features(spark, tmp_path_factory, text, date, ab_copies=2)
        copy_features(built, date, warehouse)
    features = load_features(warehouse, D1)
    # learning rate 1e-2: the tiny preset's own learns nothing in 2 epochs here (see tests/integration/test_registry.py)
    result = train(features, make_config("tiny", train_overrides={"learning_rates": (1e-2,)}), verbose=0)
    bad = sabotaged(result.bundle)
    outputs = {D1: (bad, report_of(bad, features, result.metrics)), D2: (result.bundle, result.metrics)}
    results = {}
    for date, (bundle, metrics) in outputs.items():
        save_model_outputs(warehouse, date, bundle, metrics, result.history)
        results[date] = dataclasses.replace(result, metrics=metrics)
    return {"warehouse": warehouse, "results": results}


def register(uri: str, world: dict, date: str) -> str:
    """Log ``date``'s training into the store ``uri`` and register its model; the new version."""
    from vasp_model.data import layout
    from vasp_model.mlops.tracking import TrainingTracker

    warehouse = world["warehouse"]
    with TrainingTracker(uri, "vasp") as tracker:
        tracker.log_result(
            world["results"][date], layout.models_dir(warehouse, date), layout.features_dir(warehouse, date)
        )
    return tracker.model_version


def tree_digest(path: str) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``path`` (empty when it does not exist)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out
