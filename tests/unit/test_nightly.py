"""The nightly plumbing without Airflow: config, the date a run owns, the plan, the stage registry,
the list checks."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json

import pandas as pd
import pytest

from vasp_model.core.settings import ConfigError
from vasp_model.pipeline import checks, plan, tasks
from vasp_model.pipeline.stages import STAGES


def test_config_defaults_env_and_validation(monkeypatch):
    monkeypatch.setenv("VASP_SCHEDULE", "30 3 * * *")
    monkeypatch.setenv("VASP_TIMEZONE", "Europe/Prague")
    monkeypatch.setenv("VASP_GPU_POOL", "gpu")
    cfg = plan.load_config({"top_n": 7})
    assert (cfg.schedule, cfg.timezone, cfg.gpu_pool, cfg.top_n, cfg.spark_mode) == (
        "30 3 * * *",
        "Europe/Prague",
        "gpu",
        7,
        "local",
    )
    for bad in ({"spark_mode": "yarn"}, {"timezone": "Mars/Olympus"}, {"preset": "huge"}, {"top_n": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            plan.load_config(bad)


def test_partition_date_is_the_logical_date_in_the_dag_time_zone():
    at = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)
    assert plan.partition_date(at, None, "UTC") == "2026-03-01"
    assert plan.partition_date(at, None, "Europe/Prague") == "2026-03-02"


def test_a_run_without_logical_date_covers_the_day_before_it_runs():
    run_after = dt.datetime(2026, 3, 5, 2, 0, tzinfo=dt.UTC)
    assert plan.partition_date(None, run_after, "UTC") == "2026-03-04"
    with pytest.raises(ValueError, match="logical-date"):
        plan.partition_date(None, None, "UTC")


def test_plan_resolves_input_outputs_and_stage_configs(tmp_path):
    cfg = plan.load_config({"warehouse": str(tmp_path / "wh")})
    night = plan.make_plan({"input": "/data/events/dt={date}/", "top_n": 5}, dt.datetime(2026, 3, 1), config=cfg)
    assert night.date == "2026-03-01"
    assert night.input == "/data/events/dt=2026-03-01/" and not night.synthetic
    assert night.recommendations == f"{tmp_path}/wh/recommendations/dt=2026-03-01"
    build = night.build_config()
    assert (build.input, build.date, build.warehouse) == ("/data/events/dt=2026-03-01/", "2026-03-01", cfg.warehouse)
    assert (build.build.threshold, build.build.min_user_interactions) == (cfg.threshold, cfg.min_user_interactions)
    score = night.score_config()
    assert (score.top_n, score.tracking_uri, score.model_uri) == (5, cfg.tracking_uri, "models:/vasp@champion")
    train = night.train_config()
    assert train.vasp.preset == cfg.preset and train.quiet and train.tracking
    assert night.promote_config().tracking.tracking_uri == cfg.tracking_uri
    synthetic = plan.make_plan({"date": "2026-02-01"}, None, config=cfg)
    assert synthetic.synthetic and synthetic.input.endswith("synthetic/dt=2026-02-01/interactions.csv")
    synth = synthetic.synth_config()
    assert (synth.out, synth.format, synth.data.users) == (synthetic.input, "csv", cfg.synthetic_users)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        plan.make_plan({"date": "yesterday"}, None, config=cfg)


def test_a_runs_fit_budget_reaches_the_training_config(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_FIT_BUDGET", raising=False)
    cfg = plan.load_config({"warehouse": str(tmp_path)})
    assert plan.make_plan({}, dt.datetime(2026, 3, 1), config=cfg).train_config().vasp.train.fit_budget is None
    night = plan.make_plan({"fit_budget": "20m"}, dt.datetime(2026, 3, 1), config=cfg)
    assert night.train_config().vasp.train.fit_budget_seconds == 1200.0
    deployed = plan.load_config({"warehouse": str(tmp_path), "fit_budget": "45m"})
    assert plan.make_plan({}, dt.datetime(2026, 3, 1), config=deployed).train_config().vasp.train.fit_budget == "45m"
    with pytest.raises(
        ValueError, match="fit_budget must be a positive duration such as 900s, 30m, 2h or 1h30m, got '20'"
    ):
        plan.make_plan({"fit_budget": "20"}, dt.datetime(2026, 3, 1), config=cfg)


def test_the_champion_scored_is_that_of_the_configured_registered_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VASP_REGISTERED_MODEL", "recs")
    night = plan.make_plan({}, dt.datetime(2026, 3, 1), config=plan.load_config({"warehouse": str(tmp_path)}))
    assert night.score_config().model_uri == "models:/recs@champion"
    assert _parse("score", ["--date", "2026-03-01"]).model_uri == "models:/recs@champion"
    assert _parse("score", ["--date", "2026-03-01", "--model-uri", "models:/vasp/3"]).model_uri == "models:/vasp/3"


def test_rescore_goes_with_rollback():
    assert _parse("promote", ["--date", "2026-03-01", "--rollback", "--rescore"]).rescore
    with pytest.raises(ValueError, match="--rescore goes with --rollback"):
        _parse("promote", ["--date", "2026-03-01", "--rescore"])


def test_plan_crosses_xcom_as_json(tmp_path):
    night = plan.make_plan({}, dt.datetime(2026, 3, 1), config=plan.load_config({"warehouse": str(tmp_path)}))
    assert plan.Plan(**json.loads(json.dumps(dataclasses.asdict(night)))) == night
    with pytest.raises(dataclasses.FrozenInstanceError):
        night.date = "2026-03-02"


def test_registry_lists_every_stage_with_its_config():
    assert list(STAGES) == ["synth", "build", "tune", "train", "promote", "score", "report"]
    assert {name for name, stage in STAGES.items() if stage.script} == {"build", "score"}
    for name, stage in STAGES.items():
        api = stage.load()
        assert dataclasses.is_dataclass(api.config) and api.config.__dataclass_params__.frozen, name
        assert (api.to_argv is not None) == (stage.script is not None), name
    assert STAGES["build"].application.endswith("jobs/build_matrices.py")
    with pytest.raises(ValueError, match="not a Spark job"):
        STAGES["train"].argv(None)


def _parse(stage: str, argv: list[str]):
    parser = argparse.ArgumentParser()
    api = STAGES[stage].load()
    api.add_arguments(parser)
    return api.from_args(parser.parse_args(argv))


@pytest.mark.parametrize("stage", ["build", "score"])
def test_spark_argv_round_trips_through_the_job_parser(tmp_path, monkeypatch, stage):
    """What the DAG gives spark-submit parses, with the job's own parser, back into the same config."""
    monkeypatch.setenv("VASP_AB_COPIES", "3")  # a deployment setting: both sides read it
    night = plan.make_plan({"top_n": 7}, dt.datetime(2026, 3, 1), config=plan.load_config({"warehouse": str(tmp_path)}))
    config = {"build": night.build_config, "score": night.score_config}[stage]()
    assert _parse(stage, tasks.spark_argv(stage, night)) == config
    spark = dataclasses.replace(
        config.spark, spark_master="local[2]", spark_executor_memory="2g", spark_conf=("spark.task.cpus=2",)
    )
    if stage == "build":
        changed = dataclasses.replace(
            config,
            input=None,
            spark=spark,
            build=dataclasses.replace(config.build, heldout_users=4, user_col="u", seed=7, format="csv"),
        )
    else:
        changed = dataclasses.replace(config, spark=spark, model_uri="/m", batch_users=16, partitions=3, exclude="none")
    assert _parse(stage, STAGES[stage].argv(changed)) == changed
    with pytest.raises(TypeError, match="takes a"):
        STAGES[stage].argv(night)


def _lists(rows):
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])


USERS = pd.DataFrame({"user_idx": [0, 1], "user_id": ["u1", "u2"]})
SEEN = pd.DataFrame({"user_idx": [0, 1, 1], "item_id": ["a", "b", "c"]})
VOCAB = {"a", "b", "c", "d", "e"}
GOOD = [("u1", 1, "b"), ("u1", 2, "c"), ("u2", 1, "a"), ("u2", 2, "d")]


def _manifest(rows=4, users=2, excluded=3, exclude="all"):
    counts = {"rows": rows, "users": users, "users_input": 2, "excluded_candidates": excluded}
    return {"top_n": 2, "exclude": exclude, "counts": counts}


def test_valid_lists_pass():
    counts = checks.check_recommendations(_lists(GOOD), USERS, SEEN, 2, "all", _manifest(), VOCAB)
    assert counts["users"] == 2 and counts["rows"] == 4 and counts["short_lists"] == 0
    assert (counts["exclude"], counts["excluded_candidates"]) == ("all", 3)


@pytest.mark.parametrize(
    ("rows", "manifest", "message"),
    [
        (GOOD[:2], _manifest(2, 1), "have no list"),
        (GOOD[:3], _manifest(3, 2), "do not have min"),
        ([("u1", 1, "a"), *GOOD[1:]], _manifest(), r"already seen \(exclude=all\)"),
        ([("u1", 1, "c"), *GOOD[1:]], _manifest(), "repeat an item"),
        ([("u1", 1, "b"), ("u1", 3, "c"), *GOOD[2:]], _manifest(), "ranks"),
        ([*GOOD[:3], ("u2", 2, "zz")], _manifest(), "vocabulary"),
        (GOOD, _manifest(rows=5), "manifest counts rows"),
        (GOOD, _manifest(excluded=2), "manifest counts excluded_candidates"),
        (GOOD, _manifest(exclude="positives"), "scored with exclude=positives, expected all"),
    ],
)
def test_each_rule_can_fail(rows, manifest, message):
    with pytest.raises(ValueError, match=message):
        checks.check_recommendations(_lists(rows), USERS, SEEN, 2, "all", manifest, VOCAB)


def test_short_list_is_fine_when_the_user_has_seen_almost_everything():
    seen = pd.DataFrame({"user_idx": [0, 0, 0, 0, 1], "item_id": ["a", "b", "c", "d", "a"]})
    rows = [("u1", 1, "e"), ("u2", 1, "b"), ("u2", 2, "c")]
    manifest = _manifest(rows=3, excluded=5)
    assert checks.check_recommendations(_lists(rows), USERS, seen, 2, "all", manifest, VOCAB)["short_lists"] == 1


def test_exclude_is_a_run_setting_with_env_default_and_validation(tmp_path, monkeypatch):
    cfg = plan.load_config({"warehouse": str(tmp_path)})
    night = plan.make_plan({}, dt.datetime(2026, 3, 1), config=cfg)
    assert night.exclude == "all" == night.score_config().exclude == night.train_config().exclude
    night = plan.make_plan({"exclude": "positives"}, dt.datetime(2026, 3, 1), config=cfg)
    assert night.score_config().exclude == "positives" == night.train_config().exclude
    monkeypatch.setenv("VASP_EXCLUDE", "none")
    assert plan.load_config({"warehouse": str(tmp_path)}).exclude == "none"
    assert _parse("score", ["--date", "2026-03-01"]).exclude == "none"  # the CLI default follows the env
    assert _parse("score", ["--date", "2026-03-01", "--exclude", "positives"]).exclude == "positives"
    with pytest.raises(ConfigError, match="exclude must be one of all, positives, none"):
        plan.load_config({"exclude": "seen"})
    with pytest.raises(SystemExit):
        _parse("train", ["--date", "2026-03-01", "--exclude", "seen"])
