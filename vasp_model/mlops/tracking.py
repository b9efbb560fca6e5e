"""MLflow tracking of one training: params, per-epoch metrics, final metrics, artifacts, registration.

One training is one MLflow run in the experiment ``vasp`` (created with the project's artifact
root when new). :class:`TrainingTracker` is a context manager around that run::

    with TrainingTracker(cfg.tracking_uri, cfg.experiment) as tracker:
        tracker.log_config(settings.as_params(train_config))
        result = train(features, train_config, callbacks=[tracker.callback()])
        ...  # write models/dt=D (bundle, metrics.json, test_topk.parquet)
        tracker.log_result(result, model_dir, features_dir)

``log_result`` logs the final metrics (the training's :class:`MetricsReport`, as MLflow-safe keys:
:func:`to_mlflow_metrics`; :func:`logged_report` reads it back), the paired-bootstrap intervals
(:func:`interval_metrics`: ``test_vasp_minus_ease_ndcg_at_100`` and its ``_low`` / ``_high``;
:func:`logged_interval` reads one back), the artifacts (metrics.json, history.json,
test_topk.parquet, per_user_metrics.parquet, the build manifest, PNG plots) and the model as a pyfunc whose
artifacts are the ModelBundle directory (Keras native file + item vocabulary), then registers a new
version of the registered model with tags (date, run, the features' lineage, headline test metrics).
The run also records where it came from (:mod:`vasp_model.mlops.lineage`): code and scheduler tags,
and the input and the features partition as MLflow datasets.
Any tracking URI works the same: the SQLite default or ``http://host:5000``.

mlflow/keras/matplotlib are imported inside functions (no import-time cost or side effects).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from vasp_model.core import defaults
from vasp_model.data import layout, storage
from vasp_model.data.features import lineage as features_lineage
from vasp_model.data.features import read_manifest
from vasp_model.data.layout import DATE_RE
from vasp_model.evaluation.metrics import (
    ACCURACY_KEYS,
    BUCKETS,
    EXTRA_SECTIONS,
    MODELS,
    PROTOCOL_SECTIONS,
    SPLITS,
    MetricsReport,
    model_test_metrics,
)
from vasp_model.mlops import integrity, lineage
from vasp_model.mlops.gate import EASE_REGISTERED_MODEL, GATE_METRIC

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"  # the logged model's name (MLflow 3 ``name=``)
PYFUNC_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py")  # models-from-code script
METRICS_FILE = "metrics.json"  # the run artifact holding the training's MetricsReport
_BAD_METRIC_CHARS = re.compile(r"[^/\w.\- :]")
# The environment variables MLflow's URI setters write (so that subprocesses inherit the URIs).
MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Where runs and models go and how promotion gates (env: ``VASP_TRACKING_URI``, ``VASP_GATE_MARGIN``...)."""

    tracking_uri: str = dataclasses.field(default_factory=defaults.default_tracking_uri)
    experiment: str = "vasp"
    registered_model: str = "vasp"
    # the fallback while registered_model has no champion: closed-form EASE, registered under this name
    # (empty: no EASE fallback, popularity serves)
    ease_registered_model: str = EASE_REGISTERED_MODEL
    gate_margin: float = 0.0  # the candidate must beat EASE (and the champion) by more than this (absolute nDCG@100)
    gate_metric: str = GATE_METRIC
    gate_protocol: str = "vae_cf"  # whose test the gate reads: vae_cf's held-out users, or temporal's next period
    # the lower ends of the paired intervals must clear the gate too (vs EASE: the margin, vs the champion: 0)
    gate_require_significant: bool = False

    def __post_init__(self):
        if not isinstance(self.tracking_uri, str) or not self.tracking_uri.strip():
            raise ValueError("tracking_uri must be a non-empty URI")
        for name in ("experiment", "registered_model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        ease = self.ease_registered_model
        if not isinstance(ease, str) or ease != ease.strip() or ease == self.registered_model:
            raise ValueError(
                f"ease_registered_model must be empty (no EASE fallback) or a name other than registered_model, got {ease!r}"
            )
        if not isinstance(self.gate_margin, int | float) or not math.isfinite(self.gate_margin):
            raise ValueError(f"gate_margin must be a finite number, got {self.gate_margin!r}")
        if not isinstance(self.gate_require_significant, bool):
            raise ValueError(f"gate_require_significant must be true or false, got {self.gate_require_significant!r}")
        if self.gate_protocol not in PROTOCOL_SECTIONS:
            raise ValueError(f"gate_protocol must be one of {', '.join(PROTOCOL_SECTIONS)}, got {self.gate_protocol!r}")
        if self.gate_metric not in ACCURACY_KEYS:
            raise ValueError(f"gate_metric must be one of {', '.join(ACCURACY_KEYS)}, got {self.gate_metric!r}")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts into ``a.b.c -> float`` (non-numeric and non-finite values dropped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=name + "."))
        elif isinstance(value, bool):
            continue
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                out[name] = number
    return out


def to_mlflow_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """(Nested) metrics as MLflow metrics: ``{"test": {"vasp": {"ndcg@100": x}}}`` -> ``{"test.vasp.ndcg_at_100": x}``.

    ``@`` becomes ``_at_`` and any other character MLflow rejects becomes ``_``; non-numeric and
    non-finite values are dropped.
    """
    return {_BAD_METRIC_CHARS.sub("_", k.replace("@", "_at_")): v for k, v in flatten_metrics(metrics).items()}


def from_mlflow_metrics(metrics: Mapping[str, float]) -> MetricsReport:
    """The report sections (test, validation, and the temporal and given protocols') of a run's MLflow
    metrics: the inverse of
    :func:`to_mlflow_metrics` on them (``test.vasp.ndcg_at_100`` -> ``report["test"]["vasp"]["ndcg@100"]``)."""
    report: dict[str, dict[str, dict[str, float]]] = {split: {} for split in (*SPLITS, *EXTRA_SECTIONS)}
    for key, value in metrics.items():
        split, _, rest = key.partition(".")
        model, _, name = rest.partition(".")
        if split in report and model and name:
            report[split].setdefault(model, {})[name.replace("_at_", "@")] = float(value)
    for section in EXTRA_SECTIONS:
        if not report[section]:
            del report[section]
    return MetricsReport(**report)


def interval_metric_key(split: str, pair: str, metric: str) -> str:
    """MLflow key of a paired difference: ``("test", "vasp-ease", "ndcg@100")`` -> ``test_vasp_minus_ease_ndcg_at_100``."""
    return _BAD_METRIC_CHARS.sub("_", f"{split}_{pair.replace('-', '_minus_')}_{metric}".replace("@", "_at_"))


def interval_metrics(intervals: Mapping[str, Any]) -> dict[str, float]:
    """A training's ``intervals`` (``{split: {pair: {metric: PairedDifference.to_dict()}}}``) as MLflow
    metrics: the difference under :func:`interval_metric_key`, its interval's ends under ``_low`` / ``_high``."""
    out: dict[str, float] = {}
    for split, pairs in intervals.items():
        for pair, by_metric in pairs.items():
            for metric, diff in by_metric.items():
                key = interval_metric_key(split, pair, metric)
                out |= {key: diff["diff"], f"{key}_low": diff["low"], f"{key}_high": diff["high"]}
    return out


def logged_interval(client, run_id: str, metric: str, pair: str = "vasp-ease") -> tuple[float, float] | None:
    """The (low, high) test interval of ``pair``'s ``metric`` that a training run logged (None: not logged)."""
    key = interval_metric_key("test", pair, metric)
    logged = client.get_run(run_id).data.metrics
    if f"{key}_low" not in logged or f"{key}_high" not in logged:
        return None
    return logged[f"{key}_low"], logged[f"{key}_high"]


def logged_report(client, run_id: str) -> MetricsReport:
    """The report a training run logged: its metrics.json artifact, else its MLflow metrics."""
    if METRICS_FILE in {artifact.path for artifact in client.list_artifacts(run_id)}:
        with tempfile.TemporaryDirectory(prefix="vasp-metrics-") as tmp:
            with open(client.download_artifacts(run_id, METRICS_FILE, tmp)) as fh:
                return json.load(fh)
    log.debug("run %s has no %s artifact: reading its MLflow metrics", run_id, METRICS_FILE)
    return from_mlflow_metrics(client.get_run(run_id).data.metrics)


def logged_per_user(client, run_id: str):
    """The per-user metrics table a training run logged (:func:`vasp_model.evaluation.compare.read_per_user`);
    FileNotFoundError when the run has none."""
    from vasp_model.evaluation.compare import read_per_user

    with tempfile.TemporaryDirectory(prefix="vasp-per-user-") as tmp:
        return read_per_user(client.download_artifacts(run_id, layout.PER_USER_METRICS, tmp))


@contextlib.contextmanager
def mlflow_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``tracking_uri`` for a block.

    Only for MLflow's fluent APIs, which read these globals (an active run, ``log_model``). On exit
    both are put back as they were, through the public setters: an unset tracking URI stays unset,
    a registry that followed the tracking URI follows it again, and the environment variables the
    setters write are restored (a later default is not pinned to this store).
    """
    import mlflow

    tracking_before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    registry_before = mlflow.get_registry_uri()
    registry_follows = registry_before == mlflow.get_tracking_uri()
    env_before = {name: os.environ.get(name) for name in MLFLOW_URI_ENV}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking_before)  # None: unset again
        mlflow.set_registry_uri(None if registry_follows else registry_before)
        for name, value in env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def is_remote_tracking(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, creating it (with the project's artifact root) when new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A tracking server picks its own (proxied) artifact store unless VASP_ARTIFACT_ROOT says otherwise.
    artifact_location = None
    if not is_remote_tracking(tracking_uri) or "VASP_ARTIFACT_ROOT" in os.environ:
        artifact_location = defaults.default_artifact_root().rstrip("/") + "/" + name
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:  # lost a creation race with a concurrent run: use theirs
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _ensure_local_store_dir(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///") :]
        os.makedirs(os.path.dirname(os.path.abspath("/" + path.lstrip("/"))), exist_ok=True)


def date_of(path: str) -> str | None:
    """The logical date ``D`` of a ``.../dt=D`` (or ``.../dt=D/model``) path, if any."""
    for part in reversed(path.rstrip("/").split("/")):
        match = DATE_RE.match(part)
        if match:
            return match.group(1)
    return None


def bundle_dir_of(model_dir: str) -> tuple[str, str]:
    """(bundle dir, outputs dir) for either ``models/dt=D`` or ``models/dt=D/model``."""
    path = storage.local_path(model_dir)
    if os.path.exists(os.path.join(path, "bundle.json")):
        return path, os.path.dirname(path.rstrip("/"))
    return os.path.join(path, "model"), path


OWNER_TAGS = ("vasp.host", "vasp.pid")  # the process that opened a run: to tell an abandoned run from a live one


def owner_tags() -> dict[str, str]:
    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(os.getpid())), strict=True))


def close_abandoned_runs(client, experiment_id: str, run_name: str) -> list[str]:
    """Mark ``KILLED`` the runs named ``run_name`` (and their child runs) left ``RUNNING`` by a process of
    this host that no longer exists (killed outright, it never ended its run); returns their ids."""
    running = "attributes.status = 'RUNNING'"
    host_tag, pid_tag = OWNER_TAGS
    stale = [
        run.info.run_id
        for run in client.search_runs([experiment_id], f"attributes.run_name = '{run_name}' and {running}")
        if run.data.tags.get(host_tag) == socket.gethostname() and not _alive(run.data.tags.get(pid_tag))
    ]
    for parent in list(stale):
        children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' and {running}")
        stale += [child.info.run_id for child in children]
    for run_id in stale:
        client.set_terminated(run_id, status="KILLED")
    if stale:
        log.warning(
            "marked %d run(s) of an earlier %s KILLED: its process ended without closing them", len(stale), run_name
        )
    return stale


def _alive(pid: str | None) -> bool:
    if not (pid or "").isdigit():
        return True  # no owner recorded: leave the run alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrainingTracker:
    """A context manager around one MLflow run of one training (see module docstring)."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "vasp",
        registered_model: str | None = "vasp",
        run_name: str | None = None,
    ):
        self.tracking_uri = tracking_uri or defaults.default_tracking_uri()
        self.experiment = experiment
        self.registered_model = registered_model
        self.run_name = run_name
        self.run_id: str | None = None
        self.model_version: str | None = None
        self._pending_registration: dict[str, Any] | None = None
        self._scope = contextlib.ExitStack()

    # -- run lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> TrainingTracker:
        import mlflow

        _ensure_local_store_dir(self.tracking_uri)
        # The run is a fluent (active) run because mlflow.pyfunc.log_model only logs into one, and
        # the fluent API reads MLflow's global URIs: they point at this store until the run ends.
        with contextlib.ExitStack() as scope:
            scope.enter_context(mlflow_uri(self.tracking_uri))
            experiment_id = ensure_experiment(self.client, self.experiment, self.tracking_uri)
            if self.run_name:
                close_abandoned_runs(self.client, experiment_id, self.run_name)
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name)
            self._scope = scope.pop_all()  # the run is open: keep the URIs until __exit__
        self.run_id = run.info.run_id
        self.set_tags({**lineage.run_tags(), **owner_tags()})
        log.info("mlflow run %s in experiment %r at %s", self.run_id, self.experiment, self.tracking_uri)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import mlflow

        with self._scope:
            try:
                mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")
            except Exception as end_error:
                if exc_type is None:
                    raise
                # already failing (often: the server is gone): the run's first error is the one to report
                log.warning("could not mark mlflow run %s FAILED: %s", self.run_id, str(end_error).splitlines()[0])

    @functools.cached_property
    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)

    # -- logging (MlflowClient.log_batch splits a batch into the sizes MLflow's API allows) ------
    def log_config(self, params: Mapping[str, Any]) -> None:
        """Log the whole (flattened) config as run params (MLflow truncates values over its limit)."""
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(str(k), str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in to_mlflow_metrics(metrics).items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def callback(self):
        """A keras Callback that logs every numeric entry of each epoch's logs (loss, kl, val_ndcg@100...)."""
        import keras

        tracker = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            """Per-epoch metrics to the run; if the server stops answering, training goes on without them
            (they are in history.json, logged with the result)."""

            failed = False

            def on_epoch_end(self, epoch, logs=None):
                if not logs or self.failed:
                    return
                try:
                    tracker.log_metrics(dict(logs), step=int(epoch))
                except Exception as exc:
                    self.failed = True
                    log.warning("epoch metrics no longer logged to MLflow: %s", str(exc).splitlines()[0][:300])

        return MlflowEpochLogger()

    def log_result(
        self, result, model_dir: str, features_dir: str, date: str | None = None, register: bool = True
    ) -> str:
        """Log final metrics, artifacts and the model; register a model version (``register=False``: later,
        by :meth:`register`, e.g. once the run has ended). Returns the run id."""
        bundle_dir, outputs_dir = bundle_dir_of(model_dir)
        date = date or date_of(model_dir) or date_of(features_dir)
        metrics = dict(getattr(result, "metrics", None) or {})
        history = getattr(result, "history", None)
        best_epoch = getattr(result, "best_epoch", None)
        manifest = read_manifest(features_dir)
        origin = features_lineage(manifest, features_dir)

        self.log_metrics({k: v for k, v in metrics.items() if k not in ("timings", "intervals")})
        self.log_metrics(interval_metrics(metrics.get("intervals", {})))
        if best_epoch is not None:
            self.log_metrics({"best_epoch": best_epoch})
        self.set_tags({"date": date or "", **origin})
        lineage.log_datasets(origin)

        with tempfile.TemporaryDirectory(prefix="vasp-track-") as tmp:
            for name in (METRICS_FILE, "history.json", "test_topk.parquet", layout.PER_USER_METRICS):
                src = os.path.join(outputs_dir, name)
                if os.path.exists(src):
                    self.client.log_artifact(self.run_id, src)
            if not os.path.exists(os.path.join(outputs_dir, METRICS_FILE)):
                path = os.path.join(tmp, METRICS_FILE)
                with open(path, "w") as fh:
                    json.dump(metrics, fh, indent=2, sort_keys=True, default=float)
                self.client.log_artifact(self.run_id, path)
            path = os.path.join(tmp, "build_manifest.json")
            with open(path, "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True, default=str)
            self.client.log_artifact(self.run_id, path)
            for plot in (
                plot_training_curves(history, os.path.join(tmp, "training_curves.png")),
                plot_recall_by_bucket(metrics, os.path.join(tmp, "recall20_by_popularity.png")),
            ):
                if plot:
                    self.client.log_artifact(self.run_id, plot, artifact_path="plots")

        info = log_bundle_model(bundle_dir)
        if self.registered_model:
            self._pending_registration = {
                "model_uri": info.model_uri,
                "date": date,
                "origin": origin,
                "bundle_dir": bundle_dir,  # the staged bundle: its digest goes into the version's tags
                "metrics": metrics,
                "model_id": getattr(info, "model_id", None),
            }
            if register:
                self.register()
        return self.run_id

    def register(self) -> str | None:
        """Register the model :meth:`log_result` logged as a new version (one request: the version and its
        tags appear together). Returns the version (None: nothing to register)."""
        pending, self._pending_registration = self._pending_registration, None
        if pending is None:
            return self.model_version
        # A local (SQLite) registry resolves a models:/m-... source through MLflow's global tracking URI
        with mlflow_uri(self.tracking_uri):
            self.model_version = register_version(self.client, self.registered_model, run_id=self.run_id, **pending)
        return self.model_version


def log_bundle_model(bundle_dir: str, name: str = MODEL_NAME_IN_RUN):
    """Log a bundle directory (any kind) as pyfunc model ``name`` in the active run; returns mlflow's ModelInfo.

    The wrapper is logged as code (MLflow's models-from-code: the script
    :mod:`vasp_model.mlops.pyfunc_model`), not as a pickle, so loading it runs no unpickled code. The
    ``vasp_model`` package goes with it (``code_paths``), so the model also loads where the
    pipeline is not installed (``mlflow models serve``, a notebook). Its input example is a user who
    interacted with the first two items of the bundle's vocabulary.
    """
    import importlib.metadata as md
    import os

    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq
    from mlflow.models import infer_signature

    from vasp_model.mlops.pyfunc import BUNDLE_ARTIFACT
    from vasp_model.recommenders.bundle import ITEMS_FILE

    items = pq.read_table(os.path.join(bundle_dir, ITEMS_FILE), columns=["item_idx", "item_id"]).sort_by("item_idx")
    example_in = pd.DataFrame({"item_ids": [[str(i) for i in items.column("item_id").to_pylist()[:2]]]})
    example_out = pd.DataFrame({"item_ids": [["3", "4"]], "scores": [[1.0, 0.5]], "fallback": [False]})
    signature = infer_signature(example_in, example_out, params={"n": 100})
    requirements = []
    for dist in ("mlflow", "keras", "tensorflow-cpu", "numpy", "pandas", "pyarrow", "scipy"):
        try:
            requirements.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=PYFUNC_CODE,  # models-from-code: a file path, never a pickled object
        artifacts={BUNDLE_ARTIFACT: bundle_dir},
        signature=signature,
        input_example=example_in,
        pip_requirements=requirements,
        code_paths=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],  # the package: vasp_model/
    )


def register_version(
    client,
    name: str,
    model_uri: str,
    run_id: str,
    date: str | None,
    origin: Mapping[str, str],
    metrics: Mapping[str, Any],
    bundle_dir: str,
    model_id: str | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` tagged with date, run, the features' lineage
    ``origin`` (:func:`vasp_model.data.features.lineage`), the headline test metrics of every model
    of the report (``test.vasp.ndcg_at_100``...) and the digest of the logged bundle ``bundle_dir``
    (:func:`vasp_model.mlops.integrity.digest_tags`). The tags go with the version in one call: a
    version never exists without them."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags = {"date": date or "", "run_id": run_id, **origin}
    headline = {m: {k: v for k, v in model_test_metrics(metrics, m).items() if k in ACCURACY_KEYS} for m in MODELS}
    tags.update({k: f"{v:.6f}" for k, v in to_mlflow_metrics({"test": headline}).items()})
    tags.update(integrity.digest_tags(bundle_dir))
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
    log.info("registered %s version %s (date=%s, run=%s)", name, version.version, date, run_id)
    return str(version.version)


# -- plots ---------------------------------------------------------------------------------------


def _history_series(history) -> dict[str, list[float]]:
    if history is None:
        return {}
    if hasattr(history, "history"):  # keras History
        history = history.history
    if isinstance(history, Mapping):
        if "epochs" in history and isinstance(history["epochs"], list):
            history = history["epochs"]
        else:
            return {k: [float(x) for x in v] for k, v in history.items() if isinstance(v, list | tuple)}
    series: dict[str, list[float]] = {}
    if isinstance(history, list | tuple):
        for row in history:
            if isinstance(row, Mapping):
                for k, v in flatten_metrics(row).items():
                    series.setdefault(k, []).append(v)
    return series


def plot_training_curves(history, path: str) -> str | None:
    """Loss/KL and validation-metric curves per epoch as one PNG (None without a history)."""
    series = {
        k: v
        for k, v in _history_series(history).items()
        if v and k not in ("epoch", "step", "learning_rate") and not k.endswith("_seconds")
    }
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    train_keys = [k for k in series if not any(t in k for t in ("ndcg", "recall", "coverage"))]
    val_keys = [k for k in series if k not in train_keys]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, title in ((axes[0], train_keys, "training"), (axes[1], val_keys, "validation")):
        for key in keys:
            ax.plot(range(1, len(series[key]) + 1), series[key], marker=".", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_recall_by_bucket(metrics: Mapping[str, Any], path: str) -> str | None:
    """Recall@20 by item-popularity bucket (head/mid/tail) for VASP vs EASE vs popularity."""
    models = {m: model_test_metrics(metrics, m) for m in MODELS}
    if not any(f"recall@20_{b}" in values for values in models.values() for b in BUCKETS):
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(models)
    x = np.arange(len(BUCKETS))
    for i, (model, values) in enumerate(models.items()):
        heights = [values.get(f"recall@20_{b}", float("nan")) for b in BUCKETS]
        ax.bar(x + i * width, heights, width, label=model)
    ax.set_xticks(x + width * (len(models) - 1) / 2, BUCKETS)
    ax.set_ylabel("Recall@20 (test)")
    ax.set_title("Recall@20 by item popularity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
