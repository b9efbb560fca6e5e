"""Event-log input: the window as of D (nothing from the future, also on a backfill), late and
repeated events counted, bad rows quarantined with a reason, a missing partition a clear error;
the temporal holdout (train before D - h, evaluate on the next period)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from vasp_jobs import build_matrices as bm
from vasp_jobs import synth
from vasp_model import cli
from vasp_model.data import events as ev
from vasp_model.data import layout
from vasp_model.data.features import load_features

DAY = 86_400


def _epoch(date: str, hour: int = 12) -> int:
    return int(dt.datetime.fromisoformat(date).replace(hour=hour, tzinfo=dt.UTC).timestamp())


def _table(warehouse: str, date: str, name: str) -> pd.DataFrame:
    path = layout.feature_table(warehouse, date, name)
    return ds.dataset(path, format="parquet", ignore_prefixes=[".", "_"]).to_table().to_pandas()


def _log_frame(log_dir) -> pd.DataFrame:
    frames = []
    for part in sorted(log_dir.glob("dt=*")):
        frame = pd.read_csv(part / "part-00000.csv")
        frame["dt"] = part.name[3:]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------- window (no Spark)


def test_window_bounds_and_partitions(tmp_path):
    window = ev.Window("2024-03-05", history_days=3)
    assert window.end == _epoch("2024-03-06", 0)
    assert window.start == window.end - 3 * DAY and window.first_date == "2024-03-03"
    for d in ("2024-03-01", "2024-03-03", "2024-03-04", "2024-03-05", "2024-03-06"):
        (tmp_path / f"dt={d}").mkdir()
    # dt=2024-03-06 is after D: never read; 03-02 is missing but outside the 3-day window
    assert list(ev.window_partitions(str(tmp_path), window)) == ["2024-03-03", "2024-03-04", "2024-03-05"]
    with pytest.raises(ValueError, match=r"missing partition dt=2024-03-02 inside the window 2024-03-01\.\.2024-03-05"):
        ev.window_partitions(str(tmp_path), ev.Window("2024-03-05"))
    with pytest.raises(ValueError, match="missing partition dt=2024-03-07"):
        ev.window_partitions(str(tmp_path), ev.Window("2024-03-07", history_days=2))
    assert ev.split_input("events:/x/y") == ("/x/y", True) and ev.split_input("/x/y") == ("/x/y", False)
    with pytest.raises(ValueError, match="history_days"):
        ev.Window("2024-03-05", history_days=0)


def test_missing_partition_is_one_line_from_the_cli(tmp_path, capsys):
    for d in ("2024-03-01", "2024-03-03"):
        (tmp_path / "log" / f"dt={d}").mkdir(parents=True)
        (tmp_path / "log" / f"dt={d}" / "a.csv").write_text("user_id,item_id,timestamp\n1,2,1709294400\n")
    argv = ["build", "--events", str(tmp_path / "log"), "--date", "2024-03-03", "--warehouse", str(tmp_path / "wh")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing partition dt=2024-03-02" in err[0]
    written = {p.name for p in (tmp_path / "wh").iterdir()} if (tmp_path / "wh").exists() else set()
    assert written <= {"_locks"}  # nothing but the stage's per-date lock file


def test_sensor_waits_for_the_partition_of_the_date():
    from vasp_model.pipeline.plan import NightlyConfig, make_plan

    config = NightlyConfig(warehouse="/wh", input="events:/data/events")
    plan = make_plan({"date": "2024-03-05"}, None, config=config)
    assert plan.awaited_input == "/data/events/dt=2024-03-05"
    plain = make_plan({"date": "2024-03-05", "input": "/data/{date}.csv"}, None, config=config)
    assert plain.awaited_input == "/data/2024-03-05.csv"


def test_synth_log_partitions_by_event_day_with_late_events(tmp_path):
    data = synth.SynthConfig(users=50, items=40, mean_per_user=10, seed=3)
    summary = synth.generate_log(data, str(tmp_path / "log"), synth.EventLogConfig(3, "2024-01-03", 0.1))
    frame = _log_frame(tmp_path / "log")
    assert len(frame) == summary["rows"] == synth.generate(data)["rows"]
    day = pd.to_datetime(frame["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    assert (day <= frame["dt"]).all() and day.min() == "2024-01-01" and day.max() == "2024-01-03"
    assert (day < frame["dt"]).sum() == summary["late_events"] > 0


# ---------------------------------------------------------------------------- the build (Spark)


@pytest.fixture(scope="module")
def synth_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("evlog")
    data = synth.SynthConfig(users=120, items=60, mean_per_user=25, seed=7)
    synth.generate_log(data, str(root / "log"), synth.EventLogConfig(4, "2024-01-04", 0.05))
    return root


def test_build_reads_the_log_as_of_d(spark, synth_log):
    log, warehouse, date = synth_log / "log", str(synth_log / "wh"), "2024-01-03"
    config = bm.BuildConfig(heldout_users=10, ab_copies=2, temporal_holdout_days=1)
    manifest = bm.build(spark, ev.EVENTS_PREFIX + str(log), warehouse, date, config)
    frame = _log_frame(log)
    end = ev.Window(date).end
    read = frame[frame["dt"] <= date]  # a backfill of D never reads a later partition
    in_window = read[read["timestamp"] < end]
    c = manifest["counts"]
    assert c["input_rows"] == len(read) == len(in_window)  # late events of D in dt=D+1 are not there yet
    assert c["quarantine_by_reason"] == {} and len(frame[frame["dt"] > date]) > 0
    event_day = pd.to_datetime(in_window["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    assert c["late_events"] == int((event_day < in_window["dt"]).sum()) > 0
    assert c["repeated_events"] == 0
    positives = in_window[in_window["rating"] > 3.5].groupby(["user_id", "item_id"])["timestamp"].min()
    assert c["positives"] == len(positives)
    inter = _table(warehouse, date, "interactions")
    assert inter["timestamp"].max() < end and inter["timestamp"].notna().all()
    # the first positive time of each pair, kept per interaction
    users = _table(warehouse, date, "users").set_index("user_idx")["user_id"].astype(int)
    got = inter.assign(user_id=inter["user_idx"].map(users), item_id=inter["item_id"].astype(int))
    assert got.set_index(["user_id", "item_id"])["timestamp"].sort_index().equals(positives.sort_index())
    cutoff = end - DAY
    assert manifest["temporal"] == {"holdout_days": 1, "cutoff": cutoff}
    assert c["temporal_holdout_positives"] == int((positives >= cutoff).sum())
    assert manifest["input"]["partitions"] == ["2024-01-01", "2024-01-03"]


def test_temporal_holdout_keeps_the_next_period_out_of_training(spark, synth_log):
    from vasp_model.evaluation.temporal import evaluate_temporal
    from vasp_model.recommenders.baselines import Popularity

    warehouse, date = str(synth_log / "wh"), "2024-01-03"
    features = load_features(warehouse, date)
    cutoff = features.manifest["temporal"]["cutoff"]
    inter = _table(warehouse, date, "interactions")
    users = _table(warehouse, date, "users")
    train_ids = set(users.loc[users["split"] == "train", "user_idx"])
    learned = inter[inter["user_idx"].isin(train_ids) & (inter["timestamp"] < cutoff) & inter["item_idx"].notna()]
    assert features.train.nnz == len(learned) < len(inter[inter["user_idx"].isin(train_ids)])
    t = features.temporal
    assert t is not None and t.n_users > 0
    assert t.fold_in.multiply(t.holdout).nnz == 0  # the next period holds only new positives
    after = inter[inter["timestamp"] >= cutoff]
    seen = set(inter.loc[(inter["timestamp"] < cutoff) & inter["item_idx"].notna(), "user_idx"])
    after = after[after["user_idx"].isin(seen)]
    assert features.temporal_next_items == len(after)
    assert features.temporal_new_items == int(after["item_idx"].isna().sum())
    assert t.holdout.nnz == int(after["item_idx"].notna().sum())
    pop = Popularity.from_counts(features.popularity)
    out = evaluate_temporal({"popularity": (pop, features.n_items)}, features)["popularity"]
    assert out["users"] == t.n_users and 0.0 <= out["recall@20"] <= out["hit_rate@20"] <= 1.0
    assert 0.0 < out["ndcg@100"] <= 1.0


def test_bad_event_log_rows_are_quarantined_with_reasons(spark, tmp_path):
    log = tmp_path / "log"
    good = ["user_id,item_id,rating,timestamp"]
    good += [f"{u},{i},5,{_epoch('2024-03-01') + u * 60 + i}" for u in range(1, 9) for i in range(1, 8)]
    (log / "dt=2024-03-01").mkdir(parents=True)
    (log / "dt=2024-03-01" / "a.csv").write_text("\n".join(good) + "\n")
    (log / "dt=2024-03-02").mkdir()
    (log / "dt=2024-03-02" / "a.csv").write_text(
        "user_id,item_id,rating,timestamp\n"
        f"1,20,5,{_epoch('2024-03-02')}\n"
        "1,21,5,yesterday\n"  # unparsable_timestamp
        "1,22,5,\n"  # null_timestamp
        f"1,23,5,{_epoch('2024-03-04')}\n"  # future_timestamp: after the end of D
        "2,20,5,2024-03-02T08:00:00Z\n"  # an ISO time parses
        f"2,1,5,{_epoch('2024-02-28')}\n"  # late: an earlier day, still inside the window
    )
    (log / "dt=2024-03-03").mkdir()  # another schema: its rows are quarantined, never guessed at
    (log / "dt=2024-03-03" / "a.csv").write_text(f"uid,iid,stars,when\n3,30,5,{_epoch('2024-03-03')}\n4,30,5,1\n")
    (log / "dt=2024-03-03" / "b.csv").write_text(f"user_id,item_id,rating,timestamp\n5,9,5,{_epoch('2024-03-03')}\n")
    warehouse = str(tmp_path / "wh")
    config = bm.BuildConfig(heldout_users=1, ab_copies=1)
    manifest = bm.build(spark, ev.EVENTS_PREFIX + str(log), warehouse, "2024-03-03", config)
    c = manifest["counts"]
    assert c["quarantine_by_reason"] == {
        "unparsable_timestamp": 1,
        "null_timestamp": 1,
        "future_timestamp": 1,
        "schema_mismatch": 2,
    }
    assert c["input_rows"] == 56 + 6 + 3 and c["quarantined_rows"] == 5 and c["late_events"] == 1
    quarantine = _table(warehouse, "2024-03-03", "quarantine")
    mismatch = quarantine[quarantine["reason"] == "schema_mismatch"]
    assert sorted(mismatch["line"]) == [2, 3] and mismatch["source"].str.endswith("dt=2024-03-03/a.csv").all()
    assert "yesterday" in quarantine.loc[quarantine["reason"] == "unparsable_timestamp", "raw"].iloc[0]


def test_history_days_leaves_out_older_events(spark, synth_log):
    log, warehouse, date = synth_log / "log", str(synth_log / "wh-window"), "2024-01-04"
    config = bm.BuildConfig(heldout_users=5, ab_copies=1, history_days=2)
    manifest = bm.build(spark, ev.EVENTS_PREFIX + str(log), warehouse, date, config)
    window = ev.Window(date, 2)
    frame = _log_frame(log)
    read = frame[(frame["dt"] >= "2024-01-03") & (frame["dt"] <= date)]
    reasons = manifest["counts"]["quarantine_by_reason"]
    assert reasons.get("before_window", 0) == int((read["timestamp"] < window.start).sum()) > 0
    assert manifest["counts"]["input_rows"] == len(read)
    assert _table(warehouse, date, "interactions")["timestamp"].min() >= window.start
    assert np.isclose(manifest["input"]["window"]["history_days"], 2)
