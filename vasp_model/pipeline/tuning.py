"""Stage ``tune``: choose the training config of ``features/dt=D`` on validation users, within a budget.

Runs :func:`vasp_model.train.search.search` around a preset (test users are never read), logs the
study to MLflow as one run ``vasp-tune-D`` with a nested run per trial, and publishes
``{warehouse}/tuning/dt=D/`` atomically: ``config.json`` (the best trial's whole config, labelled
``tuned:D``) and ``summary.json`` (best value, trials complete / pruned / failed, budget used).
``vasp train --config tuned`` (:func:`tuned_config`) trains with the latest config chosen at or
before its date.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from typing import Any

from vasp_model.core import defaults
from vasp_model.core.config import VaspConfig
from vasp_model.core.settings import parse_duration
from vasp_model.data import layout
from vasp_model.data.locks import locked

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class TuneStageConfig:
    """Stage ``tune``: search around ``preset`` on the features of ``date`` for ``budget`` of wall clock."""

    date: str
    warehouse: str
    tracking_uri: str
    preset: str = "cpu"
    budget: str = "30m"  # a duration (parse_duration): no trial starts after it, a running one stops at its epoch end
    trials: int | None = None  # at most this many trials (None: as many as the budget allows)
    max_epochs: int | None = None  # epochs of the longest trial (None: twice the preset's schedule)
    sampler_seed: int = 0
    experiment: str = "vasp"

    def __post_init__(self) -> None:
        from vasp_model.core.config import PRESETS

        layout.check_date(self.date)
        parse_duration(self.budget)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("trials", "max_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def budget_s(self) -> float:
        return parse_duration(self.budget)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", default=defaults.default_warehouse(), help="Warehouse root (path or URI).")
    parser.add_argument("--date", required=True, help="Logical date YYYY-MM-DD of the features to tune on.")
    parser.add_argument(
        "--budget", default="30m", help="Wall-clock budget of the study: 900s, 30m, 2h, 1h30m (default 30m)."
    )
    parser.add_argument("--trials", type=int, default=None, help="At most this many trials (default: the budget's).")
    parser.add_argument("--preset", default="cpu", help="Config preset the search starts from: paper | cpu | tiny.")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="Epochs of the longest trial (default: twice the preset's)."
    )
    parser.add_argument("--sampler-seed", type=int, default=0, help="Seed of the TPE sampler.")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: local SQLite under VASP_HOME)."
    )
    parser.add_argument("--experiment", default="vasp", help="MLflow experiment name.")


def config_from_args(args: argparse.Namespace) -> TuneStageConfig:
    return TuneStageConfig(
        date=args.date,
        warehouse=args.warehouse,
        tracking_uri=args.tracking_uri or defaults.default_tracking_uri(),
        preset=args.preset,
        budget=args.budget,
        trials=args.trials,
        max_epochs=args.max_epochs,
        sampler_seed=args.sampler_seed,
        experiment=args.experiment,
    )


def summarize(study, base_preset: str, elapsed_s: float, budget_s: float) -> dict[str, Any]:
    """The study in a few numbers; a ValueError when no trial completed (nothing to choose)."""
    from vasp_model.train.search import STOPPED_ATTR

    counts = Counter(trial.state.name.lower() for trial in study.trials)
    states = {state: counts[state] for state in ("complete", "pruned", "fail")}
    if not states["complete"]:
        raise ValueError(
            f"no trial completed within the budget of {budget_s:.0f} s ({states['pruned']} pruned, "
            f"{states['fail']} failed): give the study a larger --budget or a smaller --max-epochs"
        )
    best, first = study.best_trial, study.trials[0]
    return {
        "base_preset": base_preset,
        "best_value": best.value,
        "best_trial": best.number,
        "base_value": first.value,  # the preset itself (the first trial); None if it did not complete
        "params": best.params,
        "trials": states,
        "stopped_by_budget": sum(STOPPED_ATTR in trial.user_attrs for trial in study.trials),
        "budget_s": budget_s,
        "elapsed_s": round(elapsed_s, 1),
    }


def publish_tuning(warehouse: str, date: str, config: VaspConfig, summary: dict[str, Any], manifest: dict) -> str:
    """Publish ``tuning/dt=D`` (config.json, summary.json, ``manifest``) atomically; returns its URI."""
    from vasp_model.core.config import config_to_dict
    from vasp_model.data import storage

    final = layout.tuning_dir(warehouse, date)
    with storage.staged(final) as staging:
        storage.write_json(f"{staging}/{CONFIG_FILE}", config_to_dict(config))
        storage.write_json(f"{staging}/{SUMMARY_FILE}", summary)
        storage.publish(staging, final, manifest)
    return final


def tuned_config(warehouse: str, date: str) -> VaspConfig:
    """The config ``vasp tune`` chose last at or before ``date``; FileNotFoundError when there is none."""
    from vasp_model.core.config import config_from_dict
    from vasp_model.data import storage

    layout.check_date(date)
    dates = [d for d in storage.published_dates(warehouse, "tuning") if d <= date]
    if not dates:
        raise FileNotFoundError(
            f"no tuned config at or before {date} under {warehouse.rstrip('/')}/tuning: run `vasp tune --date D` first"
        )
    return config_from_dict(storage.read_json(f"{layout.tuning_dir(warehouse, dates[-1])}/{CONFIG_FILE}"))


@locked("tune")
def tune_stage(config: TuneStageConfig) -> dict[str, Any]:
    """Stage ``tune``: run the study on validation users, publish ``tuning/dt=D``, log it; returns the summary."""
    defaults.quiet_tensorflow()

    from vasp_model.core.config import config_to_dict, make_config
    from vasp_model.core.settings import as_params
    from vasp_model.data.features import input_digest, load_features
    from vasp_model.mlops.tracking import TrainingTracker
    from vasp_model.mlops.trials import TrialRuns
    from vasp_model.train.search import SearchSpace, search, trial_config

    date, warehouse = config.date, config.warehouse
    features = load_features(warehouse, date)
    defaults.tensorflow_for_training()  # the inputs are checked: load the backend for training
    space = SearchSpace(make_config(config.preset), config.max_epochs)
    run_name = f"vasp-tune-{date}"
    with TrainingTracker(config.tracking_uri, config.experiment, registered_model=None, run_name=run_name) as parent:
        parent.set_tags({"date": date, "stage": "tune"})
        settings = {"budget": config.budget, "trials": config.trials, "max_epochs": space.epoch_cap}
        parent.log_config({**as_params(space.base), **settings, "sampler_seed": config.sampler_seed})
        runs = TrialRuns(parent.client, parent.run_id, run_name)
        started = time.monotonic()
        study = search(features, space, config.budget_s, config.trials, config.sampler_seed, callbacks=[runs])
        summary = summarize(study, config.preset, time.monotonic() - started, config.budget_s)
        summary.update({"date": date, "run_id": parent.run_id, "best_run_id": runs.run_ids[summary["best_trial"]]})
        chosen = dataclasses.replace(trial_config(study.best_trial), preset=f"tuned:{date}")
        manifest = {
            "date": date,
            "base_preset": config.preset,
            "features_manifest": {"input_digest": input_digest(features.manifest)},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        final = publish_tuning(warehouse, date, chosen, summary, manifest)
        numbers = {k: summary[k] for k in ("best_value", "base_value", "elapsed_s", "stopped_by_budget")}
        parent.log_metrics({**numbers, "trials": summary["trials"]})
        parent.set_tags({"best_trial": summary["best_trial"], "best_run_id": summary["best_run_id"]})
        parent.client.log_dict(parent.run_id, config_to_dict(chosen), CONFIG_FILE)
        parent.client.log_dict(parent.run_id, summary, SUMMARY_FILE)
    return {**summary, "tuning_dir": final}
