"""The nightly run's settings and its plan: the date a run owns, its input, its choices, its outputs.

Imported when the DAG file is parsed: nothing heavy at module level; the stages' config
classes are imported inside the methods that build them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vasp_model.core import defaults, settings
from vasp_model.data import layout

if TYPE_CHECKING:  # pragma: no cover
    from vasp_jobs.build_matrices import BuildStageConfig
    from vasp_jobs.score import ScoreStageConfig
    from vasp_jobs.synth import SynthStageConfig
    from vasp_model.core.config import VaspConfig
    from vasp_model.pipeline.promotion import PromoteStageConfig
    from vasp_model.pipeline.training import TrainStageConfig
    from vasp_model.pipeline.tuning import TuneStageConfig

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
SPARK_MODES = ("local", "submit")
SENSOR_MODES = ("poke", "reschedule")
# Run-level knobs that a DAG run may override (Airflow Params / ``vasp run`` flags).
RUN_PARAMS = ("input", "preset", "top_n", "threshold", "min_user_interactions", "exclude", "tune", "fit_budget")
# tune: off; weekly = the tune stage runs before train when D falls on ``tune_weekday``; nightly = every
# night. With tuning on, train starts from the latest tuned config at or before D (the preset until one exists).
TUNE_MODES = ("off", "weekly", "nightly")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class NightlyConfig:
    """Deployment settings of the nightly DAG: defaults, then ``VASP_<FIELD>`` env vars.

    ``input`` is ``synthetic`` (generate a synthetic file for the date) or a path/URI;
    ``{date}`` in it is replaced by the logical date (``/data/events/dt={date}/``);
    ``events:DIR`` is an append-only event log read as of the date (the sensor waits for ``DIR/dt=D``).
    """

    warehouse: str = dataclasses.field(default_factory=defaults.default_warehouse)
    tracking_uri: str = dataclasses.field(default_factory=defaults.default_tracking_uri)
    input: str = SYNTHETIC
    preset: str = "cpu"
    top_n: int = 100
    threshold: float = 3.5
    min_user_interactions: int = 5
    exclude: str = defaults.DEFAULT_EXCLUDE  # what a user's list leaves out (defaults.EXCLUDE_RULES)
    tune: str = "off"  # TUNE_MODES
    tune_weekday: str = "sun"  # the weekday of D on which `tune: weekly` tunes (WEEKDAYS)
    tune_budget: str = "30m"  # wall-clock budget of a tuning study (900s, 30m, 2h, 1h30m)
    tune_trials: int | None = None  # at most this many trials per study (None: as many as the budget allows)
    # train from: none (cold) | champion (the champion of an earlier date, items mapped by id, shorter schedule)
    warm_start: str = "none"
    # wall clock for the training's joint fit (900s, 30m, 2h, 1h30m; "": the config's, none by default)
    fit_budget: str = ""
    synthetic_users: int = 3000  # size of the synthetic input (input=synthetic)
    synthetic_items: int = 1500
    schedule: str = "0 2 * * *"  # cron; each run covers the day before its run time
    timezone: str = "UTC"
    spark_mode: str = "local"  # local: in-process Spark; submit: SparkSubmitOperator
    spark_conn_id: str = "spark"
    mlflow_conn_id: str = "mlflow"  # Airflow connection whose login/password sign MLflow's client in, if it exists
    spark_py_files: str = ""  # submit mode: the package zip shipped to executors (infra/spark/submit.py builds it)
    train_pod_template: str = ""  # KubernetesExecutor: pod template file of the GPU training task
    gpu_pool: str | None = None  # Airflow pool of the training task (None = default pool)
    gpu_queue: str | None = None  # executor queue of the training task (None = default queue)
    retries: int = 2
    retry_delay_s: int = 60
    max_retry_delay_s: int = 1800
    input_timeout_s: int = 6 * 3600
    input_poke_s: int = 300
    sensor_mode: str = "reschedule"
    task_timeout_s: int = 3600
    train_timeout_s: int = 4 * 3600

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo

        from vasp_model.core.config import PRESETS

        if not self.warehouse:
            raise ValueError("warehouse must not be empty")
        layout.exclusion_table(self.exclude)
        _check_tune(self.tune, self.tune_weekday, self.tune_budget, self.tune_trials)
        if self.fit_budget:
            settings.parse_duration(self.fit_budget, "fit_budget")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.spark_mode not in SPARK_MODES:
            raise ValueError(f"spark_mode must be one of {SPARK_MODES}, got {self.spark_mode!r}")
        if self.sensor_mode not in SENSOR_MODES:
            raise ValueError(f"sensor_mode must be one of {SENSOR_MODES}, got {self.sensor_mode!r}")
        if len(self.schedule.split()) != 5:
            raise ValueError(f"schedule must be a 5-field cron expression, got {self.schedule!r}")
        try:
            ZoneInfo(self.timezone)
        except Exception as exc:  # ZoneInfoNotFoundError, ValueError
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA time zone") from exc
        for name in (
            "top_n",
            "min_user_interactions",
            "synthetic_users",
            "synthetic_items",
            "retry_delay_s",
            "max_retry_delay_s",
            "input_poke_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "input_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.task_timeout_s <= 0 or self.train_timeout_s <= 0:
            raise ValueError("task_timeout_s and train_timeout_s must be > 0")
        if self.warm_start not in ("none", "champion"):
            raise ValueError(f"warm_start must be none or champion, got {self.warm_start!r}")


def _check_tune(tune: str, weekday: str, budget: str, trials: int | None) -> None:
    if tune not in TUNE_MODES:
        raise ValueError(f"tune must be one of {', '.join(TUNE_MODES)}, got {tune!r}")
    if weekday not in WEEKDAYS:
        raise ValueError(f"tune_weekday must be one of {', '.join(WEEKDAYS)}, got {weekday!r}")
    settings.parse_duration(budget)
    if trials is not None and trials < 1:
        raise ValueError(f"tune_trials must be >= 1 or unset, got {trials!r}")


def load_config(overrides: Mapping[str, Any] | None = None) -> NightlyConfig:
    return settings.build_config(NightlyConfig, overrides)


def partition_date(logical_date: dt.datetime | None, run_after: dt.datetime | None, timezone: str) -> str:
    """The date ``D`` a run owns.

    A scheduled run's logical date is the start of the day it covers, so ``D`` is the
    logical date in the DAG's time zone. A run triggered without a logical date
    (``airflow dags trigger`` without ``--logical-date``) covers the day before it runs,
    like the scheduled run at that time would.
    """
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(timezone)
    if logical_date is not None:
        return _as_aware(logical_date).astimezone(tz).date().isoformat()
    if run_after is None:
        raise ValueError("the run has neither a logical date nor a run_after time; trigger it with --logical-date")
    day = _as_aware(run_after).astimezone(tz).date() - dt.timedelta(days=1)
    log.warning("run has no logical date (triggered without --logical-date): processing the previous day %s", day)
    return day.isoformat()


def _as_aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def synthetic_input(warehouse: str, date: str) -> str:
    """Where the synthetic input file of ``date`` lives."""
    return f"{layout.dataset_dir(warehouse, 'synthetic', date)}/interactions.csv"


@dataclass(frozen=True)
class Plan:
    """What one run does: its date, input and choices; every stage's config is built from it.

    Only plain values, so that it crosses XCom as JSON (Airflow's dataclass serialization:
    ``dataclasses.asdict`` there, ``Plan(**data)`` back). The output locations are derived.
    """

    date: str
    input: str
    synthetic: bool
    warehouse: str
    tracking_uri: str
    preset: str
    top_n: int
    threshold: float
    min_user_interactions: int
    exclude: str
    synthetic_users: int
    synthetic_items: int
    tune: str = "off"
    tune_weekday: str = "sun"
    tune_budget: str = "30m"
    tune_trials: int | None = None
    warm_start: str = "none"
    fit_budget: str = ""

    def __post_init__(self) -> None:
        layout.check_date(self.date)
        layout.exclusion_table(self.exclude)
        _check_tune(self.tune, self.tune_weekday, self.tune_budget, self.tune_trials)
        if self.fit_budget:
            settings.parse_duration(self.fit_budget, "fit_budget")

    @property
    def tunes_tonight(self) -> bool:
        """Whether this run tunes before training (``tune`` nightly, or weekly on ``tune_weekday``)."""
        weekday = WEEKDAYS[dt.date.fromisoformat(self.date).weekday()]
        return self.tune == "nightly" or (self.tune == "weekly" and weekday == self.tune_weekday)

    @property
    def awaited_input(self) -> str:
        """What the input sensor waits for: the input, or the partition of the date of an event log."""
        from vasp_model.data.events import partition_dir, split_input

        location, is_log = split_input(self.input)
        return partition_dir(location, self.date) if is_log else self.input

    @property
    def tuning(self) -> str:
        return layout.tuning_dir(self.warehouse, self.date)

    @property
    def features(self) -> str:
        return layout.features_dir(self.warehouse, self.date)

    @property
    def models(self) -> str:
        return layout.models_dir(self.warehouse, self.date)

    @property
    def recommendations(self) -> str:
        return layout.recommendations_dir(self.warehouse, self.date)

    @property
    def runs(self) -> str:
        return layout.dataset_dir(self.warehouse, "runs", self.date)

    def synth_config(self) -> SynthStageConfig:
        from vasp_jobs.synth import SynthConfig, SynthStageConfig

        return SynthStageConfig(self.input, "csv", SynthConfig(users=self.synthetic_users, items=self.synthetic_items))

    def build_config(self) -> BuildStageConfig:
        """Deployment settings (``VASP_*``: split sizes, seed, Spark) are read where the stage runs."""
        from vasp_jobs.build_matrices import APP_NAME, BuildConfig, BuildStageConfig
        from vasp_jobs.common.spark import job_spark_config

        build = settings.build_config(
            BuildConfig, {"threshold": self.threshold, "min_user_interactions": self.min_user_interactions}
        )
        return BuildStageConfig(self.date, self.warehouse, self.input, build, job_spark_config(APP_NAME))

    def train_config(self) -> TrainStageConfig:
        from vasp_model.core.config import make_config
        from vasp_model.mlops.tracking import TrackingConfig
        from vasp_model.pipeline.training import TrainStageConfig

        vasp = make_config(self.preset, train_overrides={"fit_budget": self.fit_budget or None}, base=self.tuned())
        registered_model = settings.build_config(TrackingConfig, {"tracking_uri": self.tracking_uri}).registered_model
        return TrainStageConfig(
            self.date,
            self.warehouse,
            vasp,
            self.tracking_uri,
            quiet=True,
            exclude=self.exclude,
            warm_start=self.warm_start,
            registered_model=registered_model,
        )

    def tuned(self) -> VaspConfig | None:
        """The tuned config training starts from: with tuning on, the latest at or before the date, if any."""
        if self.tune == "off":
            return None
        from vasp_model.pipeline.tuning import tuned_config

        try:
            return tuned_config(self.warehouse, self.date)
        except FileNotFoundError:
            log.info("no tuned config at or before %s yet: training from preset %s", self.date, self.preset)
            return None

    def tune_config(self) -> TuneStageConfig:
        from vasp_model.pipeline.tuning import TuneStageConfig

        return TuneStageConfig(
            self.date, self.warehouse, self.tracking_uri, self.preset, self.tune_budget, self.tune_trials
        )

    def promote_config(self) -> PromoteStageConfig:
        from vasp_model.mlops.tracking import TrackingConfig
        from vasp_model.pipeline.promotion import PromoteStageConfig

        tracking = settings.build_config(TrackingConfig, {"tracking_uri": self.tracking_uri})
        return PromoteStageConfig(self.date, self.warehouse, tracking)

    def score_config(self) -> ScoreStageConfig:
        """The registered model (its champion) and the fallback's come from the same settings as the promote
        stage's."""
        from vasp_jobs.common.spark import job_spark_config
        from vasp_jobs.score import APP_NAME, ScoreStageConfig
        from vasp_model.mlops.registry import champion_uri

        tracking = self.promote_config().tracking
        return ScoreStageConfig(
            self.date,
            self.warehouse,
            self.tracking_uri,
            job_spark_config(APP_NAME),
            model_uri=champion_uri(tracking.registered_model),
            top_n=self.top_n,
            exclude=self.exclude,
            ease_registered_model=tracking.ease_registered_model,
        )


def make_plan(
    run_params: Mapping[str, Any],
    logical_date: dt.datetime | None,
    run_after: dt.datetime | None = None,
    config: NightlyConfig | None = None,
) -> Plan:
    """Resolve the date, the input and the choices of one run (no I/O)."""
    config = config or load_config()
    values = {name: getattr(config, name) for name in RUN_PARAMS}
    values.update({k: v for k, v in run_params.items() if k in RUN_PARAMS and v not in (None, "")})
    date = layout.check_date(str(run_params["date"])) if run_params.get("date") else None
    date = date or partition_date(logical_date, run_after, config.timezone)
    synthetic = str(values["input"]) == SYNTHETIC
    return Plan(
        date=date,
        input=synthetic_input(config.warehouse, date) if synthetic else str(values["input"]).replace("{date}", date),
        synthetic=synthetic,
        warehouse=config.warehouse,
        tracking_uri=config.tracking_uri,
        preset=str(values["preset"]),
        top_n=int(values["top_n"]),
        threshold=float(values["threshold"]),
        min_user_interactions=int(values["min_user_interactions"]),
        exclude=str(values["exclude"]),
        synthetic_users=config.synthetic_users,
        synthetic_items=config.synthetic_items,
        tune=str(values["tune"]),
        tune_weekday=config.tune_weekday,
        tune_budget=config.tune_budget,
        tune_trials=config.tune_trials,
        warm_start=config.warm_start,
        fit_budget=str(values["fit_budget"]),
    )
