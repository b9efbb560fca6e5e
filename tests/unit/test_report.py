"""The morning report on hand-made nights: its figures, its drift flags, the run record, and nights whose
comparison is unavailable (first night, a deleted or unreadable previous partition)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_model.data import layout, storage
from vasp_model.pipeline import drift, report

TOP_N = 5


def _publish_table(final: str, frame: pd.DataFrame, manifest: dict, table: str | None = None) -> None:
    staging = storage.staging_dir(final)
    target = Path(storage.local_path(staging)) / (table or "")
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), target / "part-0.parquet")
    storage.publish(staging, final, manifest)


def make_night(
    wh: Path, date: str, items: list[int], users: int = 40, rows: int = 1000, shift: int = 0, fallback=0, version="3"
):
    """features (items table + manifest counts), recommendations (top TOP_N per user) and a run record."""
    features = layout.features_dir(str(wh), date)
    counts = {"input_rows": rows, "users": users, "items": len(items)}
    _publish_table(features, pd.DataFrame({"item_id": [str(i) for i in items]}), {"counts": counts}, "items")
    ids = np.array(items)
    recs = pd.DataFrame(
        [
            {"user_id": str(u), "rank": r + 1, "item_id": str(ids[(u + r + shift) % len(ids)]), "score": 1.0 / (r + 1)}
            for u in range(users)
            for r in range(TOP_N)
        ]
    )
    serving = {"kind": "vasp", "registered_model": "vasp", "version": version}
    manifest = {"counts": {"users": users, "fallback_users": fallback}, "model_version": version, "serving": serving}
    _publish_table(layout.recommendations_dir(str(wh), date), recs, manifest)
    runs = layout.dataset_dir(str(wh), "runs", date)
    staging = storage.staging_dir(runs)
    storage.write_json(f"{staging}/run.json", {"date": date, "promotion": {"action": "rejected", "reason": "r"}})
    storage.publish(staging, runs)


def _stage(wh: Path, date: str, **thresholds) -> dict:
    return report.report_stage(
        report.ReportStageConfig(date, str(wh), tracking_uri=None, drift=drift.DriftConfig(**thresholds))
    )


def _record(wh: Path, date: str) -> dict:
    return storage.read_json(f"{layout.dataset_dir(str(wh), 'runs', date)}/run.json")


CATALOG = list(range(1, 101))


@pytest.fixture
def quiet_week(tmp_path):
    for day in range(1, 8):
        make_night(tmp_path, f"2026-05-0{day}", CATALOG)
    return tmp_path


def test_a_quiet_night_has_no_flags_and_keeps_its_record(quiet_week):
    result = _stage(quiet_week, "2026-05-07")
    assert result["flags"] == [] and result["previous"] == "available"
    record = _record(quiet_week, "2026-05-07")
    assert record["flags"] == [] and record["promotion"]["action"] == "rejected"  # the record it had is kept
    html = Path(result["report"]).read_text()
    assert html.startswith("<!DOCTYPE html>") and "No drift rule fired" in html
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)) >= 3  # plots inline
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere
    assert Path(result["report"]).parent.joinpath("_SUCCESS").exists()


def test_catalog_shift_volume_drop_churn_coverage_and_fallback_are_flagged(quiet_week):
    shifted = CATALOG[10:] + list(range(1001, 1011))  # 10 items retired, 10 launched
    make_night(quiet_week, "2026-05-08", shifted, rows=400, shift=3, fallback=20)
    flags = _stage(quiet_week, "2026-05-08")["flags"]
    by_rule = {f["rule"]: f for f in flags}
    assert set(by_rule) == {"new_items", "vanished_items", "volume_drop", "churn", "fallback_rise"}
    assert by_rule["new_items"]["value"] == pytest.approx(0.1)
    assert by_rule["vanished_items"]["value"] == pytest.approx(0.1)
    assert by_rule["volume_drop"]["value"] == pytest.approx(-0.6)
    assert by_rule["fallback_rise"]["value"] == pytest.approx(0.5)
    assert _record(quiet_week, "2026-05-08")["flags"] == flags
    # the thresholds are configuration: raised above tonight's values, nothing fires
    relaxed = dict(drift_new_items=0.2, drift_vanished_items=0.2, drift_volume_drop=0.7, drift_churn=1.0)
    assert _stage(quiet_week, "2026-05-08", **relaxed, drift_fallback_rise=0.6)["flags"] == []


def test_churn_under_a_new_champion_has_its_own_threshold(quiet_week):
    make_night(quiet_week, "2026-05-08", CATALOG, shift=3, version="4")  # the gate promoted v4: new lists
    assert _stage(quiet_week, "2026-05-08")["flags"] == []
    (flag,) = _stage(quiet_week, "2026-05-08", drift_churn_new_model=0.5)["flags"]
    assert flag["rule"] == "churn" and "another model" in flag["message"]


def test_volume_rise_and_coverage_drop(quiet_week):
    make_night(quiet_week, "2026-05-08", CATALOG, rows=2000)
    # the same items, lists squeezed onto 10 items: coverage falls from 100% to 10%
    make_night(quiet_week, "2026-05-08", CATALOG, rows=2000)
    recs_dir = layout.recommendations_dir(str(quiet_week), "2026-05-08")
    recs = pd.read_parquet(Path(storage.local_path(recs_dir)) / "part-0.parquet")
    recs["item_id"] = (recs["rank"] + recs["user_id"].astype(int) % 2).astype(str)
    manifest = storage.read_json(f"{recs_dir}/{storage.MANIFEST}")
    _publish_table(recs_dir, recs, manifest)
    rules = {f["rule"] for f in _stage(quiet_week, "2026-05-08")["flags"]}
    assert {"volume_rise", "coverage_drop"} <= rules


@pytest.mark.parametrize("damage", ["first night", "deleted", "unreadable"])
def test_a_missing_previous_night_is_reported_unavailable(tmp_path, damage):
    if damage != "first night":
        make_night(tmp_path, "2026-05-01", CATALOG)
    make_night(tmp_path, "2026-05-02", CATALOG[:50], rows=10)
    previous = Path(layout.dataset_dir(str(tmp_path), "recommendations", "2026-05-01"))
    if damage == "deleted":
        for dataset in ("features", "recommendations"):
            shutil.rmtree(Path(layout.dataset_dir(str(tmp_path), dataset, "2026-05-01")).resolve())
    elif damage == "unreadable":
        (previous.resolve() / "part-0.parquet").write_bytes(b"not parquet")
        features = Path(layout.features_dir(str(tmp_path), "2026-05-01")).resolve()
        (features / storage.MANIFEST).write_text("{broken")
    result = _stage(tmp_path, "2026-05-02")
    assert result["previous"] == "unavailable" and result["flags"] == []
    html = Path(result["report"]).read_text()
    assert "previous night 2026-05-01: unavailable" in html


def test_concentration_and_churn_figures():
    recs = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 4, "rank": [1, 2, 3, 4] * 2, "item_id": list("wxyz") * 2})
    figures = report.concentration(recs, catalog=8)
    assert figures["coverage"] == 0.5
    assert figures["gini"] == pytest.approx(0.5)  # half the catalog shares every slot equally
    assert figures["top1pct_share"] == pytest.approx(0.25)  # the top 1% of 8 items is one item
    before = recs.assign(item_id=list("wxyv") + list("wxyz"))
    moved = report.churn(recs, before)
    assert moved["mean_jaccard"] == pytest.approx((3 / 5 + 1) / 2)
    assert moved["top10_changed_share"] == 0.5


def test_drift_thresholds_from_the_environment(monkeypatch):
    monkeypatch.setenv("VASP_DRIFT_CHURN", "0.8")
    monkeypatch.setenv("VASP_DRIFT_WINDOW", "3")
    config = drift.load_drift_config()
    assert (config.drift_churn, config.drift_window) == (0.8, 3)
    monkeypatch.setenv("VASP_DRIFT_CHURN", "-1")
    with pytest.raises(ValueError, match="drift_churn"):
        drift.load_drift_config()


def test_a_report_without_features_is_a_clear_error(tmp_path, capsys):
    from vasp_model import cli

    assert cli.main(["report", "--date", "2026-05-01", "--warehouse", str(tmp_path), "--no-mlflow"]) == 1
    assert "no readable features for 2026-05-01" in capsys.readouterr().err


def test_the_dag_task_never_fails_the_night(tmp_path, caplog):
    from vasp_model.pipeline import plan, tasks

    night = plan.make_plan({"date": "2026-05-01"}, None, config=plan.load_config({"warehouse": str(tmp_path)}))
    result = tasks.report(night)  # no features at all: the report cannot be made, the task still returns
    assert result["flags"] == [] and result["report"] is None
    assert "no readable features for 2026-05-01" in result["error"] and "could not be made" in caplog.text


def test_training_plot_marks_best_epoch_learning_rate_changes_and_ease():
    history = [
        {"epoch": e, "loss": 5.0 - e * 0.1, "val_ndcg@100": 0.3 + e * 0.01, "learning_rate": 1e-3 if e <= 3 else 1e-4}
        for e in range(1, 7)
    ]
    facts = {
        "date": "2026-05-01",
        "tonight": {"model_version": "7"},
        "record": {"promotion": {"candidate_version": "8"}},
        "training": {"history": history, "best_epoch": 5, "ease_validation": 0.42},
    }
    fig = report.plot_training(facts)
    left, right = fig.axes
    labels = {line.get_label() for line in right.get_lines()}
    assert {"best epoch 5", "learning rate 0.001 → 0.0001", "EASE (validation)"} <= labels
    assert "2026-05-01 · candidate v8" in left.get_title() and right.get_ylabel() == "validation nDCG@100"
    assert report.plot_training({**facts, "training": {"history": []}}) is None
    assert not any("fit budget" in label for label in labels)
    stopped = {**facts, "training": {**facts["training"], "budget_stopped_after": 6.0}}
    labels = {line.get_label() for line in report.plot_training(stopped).axes[1].get_lines()}
    assert "fit budget: stopped after epoch 6" in labels


def test_the_nights_training_says_where_the_fit_budget_stopped_it(tmp_path):
    models = layout.models_dir(str(tmp_path), "2026-05-01")
    storage.write_json(f"{models}/metrics.json", {"best_epoch": 3, "timings": {"fit_budget_stopped_after_epoch": 4.0}})
    training = report.night_training(str(tmp_path), "2026-05-01")
    assert (training["best_epoch"], training["budget_stopped_after"]) == (3, 4.0)
    storage.write_json(f"{models}/metrics.json", {"best_epoch": 3, "timings": {}})
    assert report.night_training(str(tmp_path), "2026-05-01")["budget_stopped_after"] is None
