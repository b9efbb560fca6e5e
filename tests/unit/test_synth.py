"""The synthetic generator: sized by its config, seeded, MovieLens-like, and with a learnable signal."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vasp_jobs import synth
from vasp_model import cli

SMALL = synth.SynthConfig(users=1500, items=600, mean_per_user=40, seed=3)


@pytest.fixture(scope="module")
def frame():
    return synth.generate(SMALL)["frame"]


def test_shape_columns_and_no_duplicate_pairs(frame):
    assert list(frame.columns) == list(synth.COLUMNS)
    assert frame["user_id"].nunique() == SMALL.users
    assert 0.9 * SMALL.total <= len(frame) <= SMALL.total
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert frame["item_id"].between(1, SMALL.items).all()
    assert set(np.unique(frame["rating"])) <= set(np.arange(0.5, 5.01, 0.5))
    assert frame.groupby("user_id").size().min() >= SMALL.min_per_user


def test_seeded(frame):
    again = synth.generate(SMALL)["frame"]
    pd.testing.assert_frame_equal(frame, again)
    other = synth.generate(synth.SynthConfig(users=1500, items=600, mean_per_user=40, seed=4))["frame"]
    assert not frame.head(100).equals(other.head(100))


def test_long_tail_activity_and_rating_mix(frame):
    pop = frame.groupby("item_id").size().sort_values(ascending=False)
    assert pop.iloc[: len(pop) // 10].sum() > 0.3 * len(frame)  # the top 10% of items hold > 30% of events
    activity = frame.groupby("user_id").size()
    assert activity.max() > 4 * activity.median()  # heavy and light users
    share = (frame["rating"] > 3.5).mean()
    assert 0.35 < share < 0.6


def test_positives_carry_a_learnable_signal(frame):
    """Item-item co-occurrence from other users beats popularity at recalling a user's held-out positives."""
    pos = frame[frame["rating"] > 3.5]
    users = pos["user_id"].to_numpy() - 1
    items = pos["item_id"].to_numpy() - 1
    rng = np.random.default_rng(0)
    held = rng.random(len(pos)) < 0.2
    test_users = np.unique(users)[::5]
    is_test = np.isin(users, test_users)
    shape = (SMALL.users, SMALL.items)
    train = sp.csr_matrix(
        (np.ones((~(is_test & held)).sum()), (users[~(is_test & held)], items[~(is_test & held)])), shape
    )
    target = sp.csr_matrix((np.ones((is_test & held).sum()), (users[is_test & held], items[is_test & held])), shape)
    fit = train[np.setdiff1d(np.arange(SMALL.users), test_users)]
    gram = (fit.T @ fit).toarray()
    np.fill_diagonal(gram, 0)
    gram /= np.maximum(np.sqrt(np.outer(gram.sum(0), gram.sum(0))), 1e-9)
    popularity = np.asarray(fit.sum(0)).ravel()

    def recall(scores_fn):
        hits = total = 0
        for u in test_users:
            truth = set(target[u].indices)
            if not truth:
                continue
            seen = train[u].indices
            scores = scores_fn(u).astype(float)
            scores[seen] = -np.inf
            top = np.argpartition(-scores, 20)[:20]
            hits += len(truth & set(top))
            total += min(20, len(truth))
        return hits / total

    pop_recall = recall(lambda u: popularity.copy())
    cooc_recall = recall(lambda u: np.asarray(train[u] @ gram).ravel())
    assert cooc_recall > 1.3 * pop_recall, (cooc_recall, pop_recall)


def test_writes_csv_and_parquet(tmp_path):
    config = synth.SynthConfig(users=50, items=40, mean_per_user=10, seed=1)
    csv_summary = synth.generate(config, str(tmp_path / "s.csv"))
    first = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert first == "user_id,item_id,rating,timestamp"
    parquet_summary = synth.generate(config, str(tmp_path / "s.parquet"), "parquet")
    assert csv_summary["rows"] == parquet_summary["rows"] == len(pd.read_parquet(tmp_path / "s.parquet"))
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli_and_validation(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    for action in parser._actions:
        assert action.help, action.dest
    argv = ["--out", str(tmp_path / "x.csv"), "--users", "20", "--items", "30", "--seed", "2"]
    assert synth.config_from_args(parser.parse_args(argv)).data.users == 20
    assert cli.main(["synth", *argv]) == 0
    assert '"rows"' in capsys.readouterr().out
    for bad in ({"users": 0}, {"items": 1}, {"noise": 1.0}, {"mean_per_user": 0}):
        with pytest.raises(ValueError):
            synth.SynthConfig(**bad)


def test_default_output_is_byte_identical_to_before_drift_existed(tmp_path):
    """The drift options are off by default and leave the file exactly as the generator wrote it before them."""
    import hashlib

    out = tmp_path / "base.csv"
    synth.generate(synth.SynthConfig(users=300, items=150, seed=0), str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == (
        "b06ef116d2250bcb35150abf6837390d2b7213309435d5a29e011d11664b457c"
    )


BASE = synth.SynthConfig(users=400, items=200, seed=5)


def test_catalog_drift_launches_and_retires_items():
    base = synth.generate(BASE)["frame"]
    drifted = synth.generate(dataclasses.replace(BASE, launch_items=20, retire_items=20))["frame"]
    before, after = set(base["item_id"]), set(drifted["item_id"])
    launched, retired = after - before, before - after
    assert launched == set(range(BASE.items + 1, BASE.items + 21))
    assert len(retired) == 20
    # launched items enter with head-of-catalog popularity: each is above the median item
    counts = drifted.groupby("item_id").size()
    assert counts[sorted(launched)].min() > counts.median() / 3
    assert counts[sorted(launched)].median() > counts.median()


def test_volume_scale_keeps_a_share_of_users_with_their_events():
    base = synth.generate(BASE)["frame"]
    half = synth.generate(dataclasses.replace(BASE, volume_scale=0.5))
    frame = half["frame"]
    assert 0.4 * BASE.users < frame["user_id"].nunique() == half["users"] < 0.6 * BASE.users
    kept = base[base["user_id"].isin(frame["user_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, frame.reset_index(drop=True))  # the users left send what they sent


def test_popularity_shift_moves_the_head():
    def head(frame):
        return set(frame.groupby("item_id").size().nlargest(20).index)

    base = synth.generate(BASE)["frame"]
    shifted = synth.generate(dataclasses.replace(BASE, popularity_shift=0.3))["frame"]
    assert len(head(base) & head(shifted)) < 5


def test_drift_schedule_by_date(tmp_path):
    schedule = synth.parse_drift("2026-03-03:launch_items=30,retire_items=10; 2026-03-04:volume_scale=0.5")
    assert synth.drift_on(schedule, "2026-03-02") == {}
    assert synth.drift_on(schedule, "2026-03-03") == {"launch_items": 30, "retire_items": 10}
    assert synth.drift_on(schedule, "2026-03-09") == {"launch_items": 30, "retire_items": 10, "volume_scale": 0.5}
    for bad in ("2026-03-03", "03/03/2026:launch_items=1", "2026-03-03:colour=1", "2026-03-03:launch_items=x"):
        with pytest.raises(ValueError):
            synth.parse_drift(bad)
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    argv = ["--out", str(tmp_path / "x.csv"), "--drift", "2026-03-03:volume_scale=0.25", "--date", "2026-03-05"]
    assert synth.config_from_args(parser.parse_args(argv)).data.volume_scale == 0.25
    with pytest.raises(ValueError, match="needs --date"):
        synth.config_from_args(parser.parse_args(argv[:4]))
    for bad in ({"retire_items": 101}, {"popularity_shift": 1.0}, {"volume_scale": 0.0}, {"launch_items": -1}):
        with pytest.raises(ValueError):
            dataclasses.replace(BASE, **bad)
