"""Backfills and rollbacks through the real registry (a SQLite store), ``vasp promote`` and the Spark
scoring job: a past date never moves an alias and is scored with what served it, byte for byte.

The versions are closed-form EASE fits (no training): a good one and its sabotaged twin (same
matrix, shuffled vocabulary), each logged as a training run with its own test metrics. Every date
has the same features (one build), so two dates scored by one version publish the same files.

Nights: D1 (sabotaged, first champion v1), D3 (good, beats v1: champion v2). Then a rerun of D1
(its night retrained: v3) moves no alias and reproduces D1's files from v1; D2, which never ran,
gets v1 (what served D1, the closest earlier night); D0, before any night, the current champion.
Last, ``vasp promote --rollback --rescore`` of D3: champion v1 again and D3's lists from v1.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv
from registry_helpers import save_model_outputs, synthetic_pairs

from vasp_model.cli import main as cli_main
from vasp_model.data import layout, storage
from vasp_model.pipeline.checks import read_table

pytestmark = pytest.mark.slow

D0, D1, D2, D3 = "2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03"
TOP_N = 10


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """A warehouse with the same features for D0..D3 (test_registry's D1 build, shared in a session) and
    two EASE bundles with their reports: ``good`` and ``bad`` (sabotaged)."""
    from vasp_model.data.features import load_features
    from vasp_model.mlops.registry import rescore
    from vasp_model.recommenders.baselines import EASE
    from vasp_model.recommenders.bundle import EaseBundle, PopularityBundle

    warehouse = str(tmp_path_factory.mktemp("backfill") / "warehouse")
    text = events_csv(*synthetic_pairs(seed=0))
    copy_features(built_features(spark, tmp_path_factory, text, D1, ab_copies=2)[0], D1, warehouse)
    for date in (D0, D2, D3):
        shutil.copytree(layout.features_dir(warehouse, D1), layout.features_dir(warehouse, date))
    features = load_features(warehouse, D1)
    good = EaseBundle(EASE(50.0).fit(features.train).B, features.item_ids, features.popularity)
    bad = EaseBundle(good.B, good.item_ids[np.random.default_rng(1).permutation(good.n_items)], good.popularity)
    popularity = PopularityBundle(features.item_ids, features.popularity)

    def report(bundle) -> dict:
        return {
            split: {
                name: rescore(model, features.item_ids, getattr(features, split), features.popularity)
                for name, model in (("vasp", bundle), ("ease", good), ("popularity", popularity))
            }
            for split in ("test", "validation")
        }

    return {"warehouse": warehouse, "good": (good, report(good)), "bad": (bad, report(bad))}


class Trained:
    """What a training's outputs look like to the tracker: the report (no history, no best epoch)."""

    def __init__(self, metrics: dict):
        self.metrics = metrics


def _night_trains(uri: str, world, date: str, which: str) -> None:
    """Publish ``models/dt=D`` with the ``which`` bundle and log + register it as D's training run."""
    from vasp_model.mlops.tracking import TrainingTracker

    wh = world["warehouse"]
    bundle, metrics = world[which]
    save_model_outputs(wh, date, bundle, metrics)
    with TrainingTracker(uri, "vasp") as tracker:
        tracker.log_result(Trained(metrics), layout.models_dir(wh, date), layout.features_dir(wh, date))


def _promote(capsys, uri, world, date, *extra) -> dict:
    argv = ["promote", "--date", date, "--warehouse", world["warehouse"], "--tracking-uri", uri, "--margin", "-1"]
    assert cli_main([*argv, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _score(spark, uri, world, date) -> dict:
    """Score ``date`` as the night does (the champion asked for); its manifest."""
    from vasp_jobs.score import score

    return score(spark, date, world["warehouse"], tracking_uri=uri, top_n=TOP_N)


def _files(world, date: str) -> dict[str, bytes]:
    """Every file of ``recommendations/dt=D`` but the manifest (it records the job's duration), by name."""
    root = storage.local_path(storage.locate(layout.recommendations_dir(world["warehouse"], date)))
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name != storage.MANIFEST:
                path = os.path.join(directory, name)
                with open(path, "rb") as fh:
                    files[os.path.relpath(path, root)] = fh.read()
    return files


def _versions_served(world, date: str) -> set[str]:
    return set(read_table(layout.recommendations_dir(world["warehouse"], date))["model_version"])


def test_backfills_keep_the_champion_and_rerun_what_served(store, world, spark, capsys):
    from vasp_model.mlops.registry import aliases_of, client_for

    client = client_for(store)
    _night_trains(store, world, D1, "bad")
    assert _promote(capsys, store, world, D1)["action"] == "promoted"
    first = _score(spark, store, world, D1)
    assert first["serving"] == {"kind": "ease", "registered_model": "vasp", "version": "1"}
    assert first["serving_reason"] == ""  # the latest night: nothing pinned
    d1_files = _files(world, D1)
    assert any(name.endswith(".parquet") for name in d1_files)
    assert not [name for name in d1_files if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", name)]  # no write-job uuid

    _night_trains(store, world, D3, "good")
    assert _promote(capsys, store, world, D3)["action"] == "promoted"
    assert _score(spark, store, world, D3)["serving"]["version"] == "2"
    champion = {"champion": "2", "previous": "1"}
    assert aliases_of(client, "vasp") == champion

    # a rerun of D1 retrains (v3, good) and goes through the gate: a past date, no alias moves
    _night_trains(store, world, D1, "good")
    decision = _promote(capsys, store, world, D1)
    assert (decision["action"], decision["candidate_version"], decision["champion_after"]) == ("backfill", "3", "2")
    assert decision["reason"].startswith(f"backfill: champion not moved (a later night, {D3}, is recorded")
    assert decision["serving"] == {"kind": "ease", "registered_model": "vasp", "version": "1"}
    assert aliases_of(client, "vasp") == champion
    assert client.get_model_version("vasp", "3").tags["gate.decision"] == "backfill"
    rerun = _score(spark, store, world, D1)
    assert rerun["serving"]["version"] == "1" and "scoring with what served it" in rerun["serving_reason"]
    assert rerun["partitions"] == first["partitions"]
    assert _files(world, D1) == d1_files  # the same files, byte for byte

    # D2 never ran: what served the closest earlier night (D1); D0, before every night: the champion now
    _night_trains(store, world, D2, "good")
    assert _promote(capsys, store, world, D2)["action"] == "backfill"
    between = _score(spark, store, world, D2)
    assert between["serving"]["version"] == "1" and f"closest earlier night {D1}" in between["serving_reason"]
    assert _files(world, D2) == d1_files  # same features, same version: same files
    before = _score(spark, store, world, D0)
    assert before["serving"]["version"] == "2" and "scoring with the current champion" in before["serving_reason"]
    assert aliases_of(client, "vasp") == champion

    # rollback of D3, then D3 (the latest night) re-scored: what is served matches the alias again
    decision = _promote(capsys, store, world, D3, "--rollback", "--rescore")
    assert (decision["action"], decision["champion_after"]) == ("rolled_back", "1")
    assert decision["serving"] == {"kind": "ease", "registered_model": "vasp", "version": "1"}
    assert f"re-scored {D3} with ease vasp v1" in decision["reason"]
    assert aliases_of(client, "vasp") == {"champion": "1"}
    assert _versions_served(world, D3) == {"1"}
    manifest = storage.read_json(f"{layout.recommendations_dir(world['warehouse'], D3)}/{storage.MANIFEST}")
    assert manifest["serving"]["version"] == "1" and manifest["top_n"] == TOP_N
    assert _files(world, D3) == d1_files
    assert np.isfinite(read_table(layout.recommendations_dir(world["warehouse"], D3))["score"]).all()
