"""The nightly plumbing without Airflow: config, the date a run owns, the plan, the list checks."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from vasp_model.core.settings import ConfigError
from vasp_model.pipeline import tasks as nightly


def test_config_defaults_env_and_validation(monkeypatch):
    monkeypatch.setenv("VASP_SCHEDULE", "30 3 * * *")
    monkeypatch.setenv("VASP_TIMEZONE", "Europe/Prague")
    monkeypatch.setenv("VASP_GPU_POOL", "gpu")
    cfg = nightly.load_config({"top_n": 7})
    assert (cfg.schedule, cfg.timezone, cfg.gpu_pool, cfg.top_n, cfg.spark_mode) == (
        "30 3 * * *",
        "Europe/Prague",
        "gpu",
        7,
        "local",
    )
    for bad in ({"spark_mode": "yarn"}, {"timezone": "Mars/Olympus"}, {"preset": "huge"}, {"top_n": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            nightly.load_config(bad)


def test_partition_date_is_the_logical_date_in_the_dag_time_zone():
    at = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)
    assert nightly.partition_date(at, None, "UTC") == "2026-03-01"
    assert nightly.partition_date(at, None, "Europe/Prague") == "2026-03-02"


def test_a_run_without_logical_date_covers_the_day_before_it_runs():
    run_after = dt.datetime(2026, 3, 5, 2, 0, tzinfo=dt.UTC)
    assert nightly.partition_date(None, run_after, "UTC") == "2026-03-04"
    with pytest.raises(ValueError, match="logical-date"):
        nightly.partition_date(None, None, "UTC")


def test_plan_resolves_input_outputs_and_stage_arguments(tmp_path):
    cfg = nightly.load_config({"warehouse": str(tmp_path / "wh")})
    plan = nightly.make_plan({"input": "/data/events/dt={date}/", "top_n": 5}, dt.datetime(2026, 3, 1), config=cfg)
    assert plan["date"] == "2026-03-01"
    assert plan["input"] == "/data/events/dt=2026-03-01/" and not plan["synthetic"]
    assert plan["recommendations"] == f"{tmp_path}/wh/recommendations/dt=2026-03-01"
    assert plan["argv"]["build"][:4] == ["--input", "/data/events/dt=2026-03-01/", "--date", "2026-03-01"]
    assert plan["argv"]["score"][-2:] == ["--top-n", "5"]
    synthetic = nightly.make_plan({"date": "2026-02-01"}, None, config=cfg)
    assert synthetic["synthetic"] and synthetic["input"].endswith("synthetic/dt=2026-02-01/interactions.csv")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        nightly.make_plan({"date": "yesterday"}, None, config=cfg)


def test_stage_argv_is_accepted_by_each_stage_cli(tmp_path):
    """The arguments the DAG passes parse with the stage's own parser (the one `vasp <stage>` uses)."""
    import argparse
    import importlib

    plan = nightly.make_plan({}, dt.datetime(2026, 3, 1), config=nightly.load_config({"warehouse": str(tmp_path)}))
    for stage, module in nightly.STAGES.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(parser)
        args = parser.parse_args(plan["argv"][stage])
        if hasattr(args, "date"):
            assert args.date == "2026-03-01"


def _lists(rows):
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])


USERS = pd.DataFrame({"user_idx": [0, 1], "user_id": ["u1", "u2"]})
SEEN = pd.DataFrame({"user_idx": [0, 1, 1], "item_id": ["a", "b", "c"]})
VOCAB = {"a", "b", "c", "d", "e"}
GOOD = [("u1", 1, "b"), ("u1", 2, "c"), ("u2", 1, "a"), ("u2", 2, "d")]


def _manifest(rows=4, users=2):
    return {"top_n": 2, "counts": {"rows": rows, "users": users, "users_input": 2}}


def test_valid_lists_pass():
    checks = nightly.check_recommendations(_lists(GOOD), USERS, SEEN, 2, _manifest(), VOCAB)
    assert checks["users"] == 2 and checks["rows"] == 4 and checks["short_lists"] == 0


@pytest.mark.parametrize(
    ("rows", "manifest", "message"),
    [
        (GOOD[:2], _manifest(2, 1), "have no list"),
        (GOOD[:3], _manifest(3, 2), "do not have min"),
        ([("u1", 1, "a"), *GOOD[1:]], _manifest(), "already seen"),
        ([("u1", 1, "c"), *GOOD[1:]], _manifest(), "repeat an item"),
        ([("u1", 1, "b"), ("u1", 3, "c"), *GOOD[2:]], _manifest(), "ranks"),
        ([*GOOD[:3], ("u2", 2, "zz")], _manifest(), "vocabulary"),
        (GOOD, _manifest(rows=5), "manifest counts rows"),
    ],
)
def test_each_rule_can_fail(rows, manifest, message):
    with pytest.raises(ValueError, match=message):
        nightly.check_recommendations(_lists(rows), USERS, SEEN, 2, manifest, VOCAB)


def test_short_list_is_fine_when_the_user_has_seen_almost_everything():
    seen = pd.DataFrame({"user_idx": [0, 0, 0, 0, 1], "item_id": ["a", "b", "c", "d", "a"]})
    rows = [("u1", 1, "e"), ("u2", 1, "b"), ("u2", 2, "c")]
    manifest = {"top_n": 2, "counts": {"rows": 3, "users": 2, "users_input": 2}}
    assert nightly.check_recommendations(_lists(rows), USERS, seen, 2, manifest, VOCAB)["short_lists"] == 1
