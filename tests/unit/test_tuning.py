"""Model selection on validation users (``vasp tune``): the search space, a study with pruning and its
MLflow child runs on in-memory features, the budget, and the nightly plan's tuning settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

import numpy as np
import optuna
import pytest

from vasp_model.core.config import PRESETS, VaspConfig, make_config
from vasp_model.core.settings import parse_duration
from vasp_model.data.features import Features
from vasp_model.pipeline import plan
from vasp_model.pipeline.tuning import publish_tuning, summarize, tuned_config
from vasp_model.train.search import HISTORY_ATTR, STOPPED_ATTR, SearchSpace, TrialReporter, search, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


class ValidationOnly:
    """``features`` whose test split cannot be read: any access fails the test."""

    def __init__(self, features: Features):
        self._features = features

    def __getattr__(self, name):
        if name == "test":
            raise AssertionError("tuning read the test users")
        return getattr(self._features, name)


class PruneLaterTrialsAtStep1(optuna.pruners.BasePruner):
    """Prunes every trial but the first at its first reported epoch."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and trial.last_step == 1


@pytest.fixture(scope="module")
def features() -> Features:
    """Two taste groups of 20 items; 160 users like 8 items of their group."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(160):
        group = u % 2
        for i in rng.choice(np.arange(group * 20, group * 20 + 20), 8, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    return Features.from_interactions(users, items, n_heldout_users=16, seed=0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_preset_is_a_point_of_its_space(preset):
    base = make_config(preset, env={})
    space = SearchSpace(base)
    point = space.config(space.base_params())
    assert point.model == dataclasses.replace(base.model, ease_l2=max(base.model.ease_l2, 1e-5))
    tc = base.train
    assert point.train.total_epochs == tc.total_epochs and point.train.epochs[0] == tc.epochs[0]
    assert point.train.learning_rates[0] == tc.learning_rates[0]
    assert point.train.learning_rate(tc.total_epochs - 1) == pytest.approx(tc.learning_rates[-1])
    assert {k: v for k, v in dataclasses.asdict(point.train).items() if k not in ("epochs", "learning_rates")} == {
        k: v for k, v in dataclasses.asdict(tc).items() if k not in ("epochs", "learning_rates")
    }
    assert ("ease_init_scale" in space.dimensions()) == (base.model.ease_init == "closed_form")


def test_every_point_of_the_space_is_a_valid_config():
    space = SearchSpace(make_config("cpu", env={}))
    dims = space.dimensions()
    assert dims["hidden"].options == (256, 512, 1024) and dims["epochs"].high == 60
    assert dims["ease_l2"].log and dims["lr"].low == pytest.approx(1e-4) and dims["lr"].high == pytest.approx(1e-2)
    assert dims["ab_resplit"].options == dims["ignore_input_items"].options == (False, True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    resplit, ignore = set(), set()
    for _ in range(200):
        trial = study.ask()
        config = space.suggest(trial)
        assert isinstance(config, VaspConfig)
        resplit.add(config.train.ab_resplit)
        ignore.add(config.train.ignore_input_items)
        assert 1 <= config.train.epochs[0] and config.train.total_epochs <= 60
        assert config.model.latent * 2 == config.model.hidden
        study.tell(trial, 0.0)
    assert resplit == ignore == {False, True}
    for corner in (min, max):  # the corners are valid too
        space.config({name: corner(getattr(dim, "options", None) or (dim.low, dim.high)) for name, dim in dims.items()})
    with pytest.raises(ValueError, match="max_epochs"):
        SearchSpace(space.base, max_epochs=0)


@pytest.mark.parametrize("steps_per_epoch", [16, 19, 91, 109])
def test_the_warm_up_knob_moves_the_warm_up_at_any_steps_an_epoch(steps_per_epoch):
    space = SearchSpace(make_config("cpu", env={}))
    assert "ease_warmup_scale" in space.dimensions() and "ease_warmup_epochs" not in space.dimensions()

    def warmup(scale: float) -> int:
        point = space.base_params() | {"ease_warmup_scale": scale}
        return space.config(point).train.warmup_epochs(steps_per_epoch)

    base = space.base.train.warmup_epochs(steps_per_epoch)
    assert warmup(0.0) == 0 and warmup(1.0) == base and warmup(2.0) > base
    assert warmup(0.5) <= base  # fewer or as many (a whole epoch at most steps)
    no_warmup = SearchSpace(make_config("tiny", env={}))
    assert "ease_warmup_scale" not in no_warmup.dimensions()
    assert no_warmup.config(no_warmup.base_params() | {"ease_warmup_epochs": 3}).train.ease_warmup_epochs == 3


def test_a_study_selects_on_validation_only_prunes_and_logs_child_runs(features, tmp_path, monkeypatch):
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from vasp_model.mlops.tracking import TrainingTracker
    from vasp_model.mlops.trials import TrialRuns

    space = SearchSpace(make_config("tiny", env={}), max_epochs=2)
    monkeypatch.setenv("VASP_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with TrainingTracker(uri, "tune-test", registered_model=None, run_name="vasp-tune-test") as parent:
        runs = TrialRuns(parent.client, parent.run_id, "vasp-tune-test")
        study = search(
            ValidationOnly(features), space, 600, n_trials=3, seed=0, pruner=PruneLaterTrialsAtStep1(), callbacks=[runs]
        )
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]
    first = study.trials[0]
    assert first.params == space.base_params() and trial_config(first) == space.config(space.base_params())
    assert sorted(first.intermediate_values) == [1, 2]
    assert first.value == max(first.intermediate_values.values()) > 0
    for pruned in study.trials[1:]:
        assert list(pruned.intermediate_values) == [1] and len(pruned.user_attrs[HISTORY_ATTR]) == 1

    summary = summarize(study, "tiny", 1.0, 600)
    assert summary["trials"] == {"complete": 1, "pruned": 2, "fail": 0}
    assert summary["best_trial"] == 0 and summary["best_value"] == summary["base_value"] == first.value

    client = mlflow.MlflowClient(uri)
    children = {
        int(r.data.tags["optuna.trial"]): r
        for r in client.search_runs([parent.client.get_run(parent.run_id).info.experiment_id])
        if MLFLOW_PARENT_RUN_ID in r.data.tags
    }
    assert sorted(children) == [0, 1, 2] and set(runs.run_ids.values()) == {r.info.run_id for r in children.values()}
    for number, run in children.items():
        assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent.run_id
        assert run.data.tags["state"] == ("complete" if number == 0 else "pruned")
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_ndcg_at_100")]
        assert steps == ([1, 2] if number == 0 else [1])
        assert run.data.params["preset"] == "tiny" and "search.lr" in run.data.params
    assert children[0].data.metrics["value"] == pytest.approx(first.value)


def test_no_completed_trial_is_one_clear_error():
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(ValueError, match=r"no trial completed within the budget of 600 s \(1 pruned, 1 failed\)"):
        summarize(study, "tiny", 1.0, 600)


def test_a_trial_running_past_the_budget_stops_at_its_epoch_end():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = TrialReporter(trial, deadline=time.monotonic() - 1)
    with pytest.raises(optuna.TrialPruned, match="budget"):
        reporter.on_epoch_end(0, {"val_ndcg@100": 0.3, "loss": 1.5})
    assert trial.user_attrs[STOPPED_ATTR] == "budget"
    assert trial.user_attrs[HISTORY_ATTR] == [{"val_ndcg@100": 0.3, "loss": 1.5, "epoch": 1}]
    on_time = study.ask()
    TrialReporter(on_time, deadline=time.monotonic() + 3600).on_epoch_end(0, {"val_ndcg@100": 0.3})
    assert STOPPED_ATTR not in on_time.user_attrs


def test_budget_is_a_duration():
    assert [parse_duration(t) for t in ("900s", "30m", "2h", "1.5h", " 45 m")] == [900, 1800, 7200, 5400, 2700]
    # in parts, as durations are printed
    assert [parse_duration(t) for t in ("1h30m", "3m20s", "7m00s", "1h0m5s", "0m30s")] == [5400, 200, 420, 3605, 30]
    for bad in ("30", "30x", "0m", "-5m", "m", "", "0h0m", "20s3m", "1h1h", "h30m"):
        with pytest.raises(ValueError, match="budget must be a positive duration such as 900s, 30m, 2h or 1h30m"):
            parse_duration(bad)


def test_tuned_config_is_the_latest_at_or_before_the_date(tmp_path):
    warehouse = str(tmp_path / "wh")
    with pytest.raises(FileNotFoundError, match="no tuned config at or before 2026-03-08"):
        tuned_config(warehouse, "2026-03-08")
    base = make_config("tiny", env={})
    for date, hidden in (("2026-03-01", 8), ("2026-03-08", 32)):
        config = dataclasses.replace(base, model=dataclasses.replace(base.model, hidden=hidden), preset=f"tuned:{date}")
        publish_tuning(warehouse, date, config, {"best_value": 0.1}, {"date": date})
    assert tuned_config(warehouse, "2026-03-07").model.hidden == 8
    assert tuned_config(warehouse, "2026-03-09") == dataclasses.replace(
        base, model=dataclasses.replace(base.model, hidden=32), preset="tuned:2026-03-08"
    )
    with pytest.raises(FileNotFoundError, match="at or before 2026-02-28"):
        tuned_config(warehouse, "2026-02-28")


def test_the_plan_tunes_weekly_on_its_weekday_and_trains_from_the_tuned_config(tmp_path, monkeypatch):
    for name in ("VASP_TUNE", "VASP_TUNE_WEEKDAY", "VASP_TUNE_BUDGET", "VASP_TUNE_TRIALS", "VASP_HIDDEN"):
        monkeypatch.delenv(name, raising=False)
    warehouse = str(tmp_path / "wh")
    settings = {"warehouse": warehouse, "preset": "tiny", "tune_weekday": "sun", "tune_budget": "5m", "tune_trials": 4}
    cfg = plan.load_config(settings)
    sunday, monday = dt.datetime(2026, 3, 8), dt.datetime(2026, 3, 9)

    def night(logical_date, **params):
        return plan.make_plan(params, logical_date, config=cfg)

    assert not night(sunday).tunes_tonight and night(sunday).tune == "off"
    assert night(sunday, tune="weekly").tunes_tonight and not night(monday, tune="weekly").tunes_tonight
    assert night(monday, tune="nightly").tunes_tonight
    weekly = night(sunday, tune="weekly")
    assert plan.Plan(**json.loads(json.dumps(dataclasses.asdict(weekly)))) == weekly
    tune = weekly.tune_config()
    assert (tune.date, tune.preset, tune.budget_s, tune.trials, tune.warehouse) == (
        "2026-03-08",
        "tiny",
        300,
        4,
        warehouse,
    )

    assert night(monday, tune="weekly").train_config().vasp == make_config("tiny")  # nothing tuned yet
    tuned = dataclasses.replace(make_config("tiny"), preset="tuned:2026-03-08")
    tuned = dataclasses.replace(tuned, model=dataclasses.replace(tuned.model, hidden=32))
    publish_tuning(warehouse, "2026-03-08", tuned, {}, {})
    assert night(monday, tune="weekly").train_config().vasp == tuned
    assert night(monday).train_config().vasp == make_config("tiny")  # tuning off: the preset, as before

    for bad, message in (
        ({"tune": "daily"}, "tune must be one of off, weekly, nightly"),
        ({"tune_weekday": "sunday"}, "tune_weekday must be one of mon, "),
        ({"tune_budget": "soon"}, "budget must be a positive duration"),
        ({"tune_trials": 0}, "tune_trials must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            plan.load_config(bad)
    with pytest.raises(ValueError, match="tune must be one of off, weekly, nightly"):
        night(sunday, tune="hourly")
