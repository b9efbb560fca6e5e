"""ML-100K's timeline as an event log (``u.data`` read in place, unpartitioned, filtered by time):
the window as of D, the temporal holdout of the last 30 days, and the features training reads."""

from __future__ import annotations

import pandas as pd
import pytest
from shared_data import data_path

from vasp_jobs.build_matrices import BuildConfig, build
from vasp_model.data import events as ev
from vasp_model.data.features import load_features

ML100K = "ml-100k/u.data"
DAY = 86_400


@pytest.mark.realdata(ML100K)
def test_ml100k_timeline_window_and_temporal_holdout(spark, tmp_path):
    path = data_path(ML100K)
    ratings = pd.read_csv(path, sep="\t", names=["user", "item", "rating", "timestamp"])
    date, holdout_days = "1998-03-31", 30  # three weeks before the last event: the rest is the future
    warehouse = str(tmp_path / "wh")
    config = BuildConfig(ab_copies=2, temporal_holdout_days=holdout_days)
    manifest = build(spark, ev.EVENTS_PREFIX + str(path), warehouse, date, config)
    end = ev.Window(date).end
    cutoff = end - holdout_days * DAY
    past = ratings[ratings["timestamp"] < end]
    counts = manifest["counts"]
    assert counts["input_rows"] == len(ratings)
    assert counts["quarantine_by_reason"] == {"future_timestamp": len(ratings) - len(past)}
    assert manifest["temporal"] == {"holdout_days": holdout_days, "cutoff": cutoff}
    positives = past[past["rating"] > 3.5]
    assert counts["positives"] == len(positives)
    assert counts["temporal_holdout_positives"] == int((positives["timestamp"] >= cutoff).sum()) > 0

    features = load_features(warehouse, date)
    history = positives[positives["timestamp"] < cutoff]
    train_users = set(features.train_user_ids.astype(int))
    assert features.train.nnz == int(history["user"].isin(train_users).sum())
    vocab = set(features.item_ids.astype(int))
    seen = set(history.loc[history["item"].isin(vocab), "user"])
    nxt = positives[(positives["timestamp"] >= cutoff) & positives["user"].isin(seen)]
    assert features.temporal_next_items == len(nxt)
    assert features.temporal_new_items == int((~nxt["item"].isin(vocab)).sum())
    assert features.temporal.n_users == nxt.loc[nxt["item"].isin(vocab), "user"].nunique() > 20
