"""Model registry logic: find the date's candidate version, gate it into ``champion``, roll back.

The gate (DESIGN.md section 6): the candidate version registered for date ``D`` becomes alias
``champion`` only if

(a) it beats EASE on the same test users by the margin (from the run's ``metrics.json``), and
(b) it beats the current champion re-scored on D's test users. The champion's vocabulary may
    differ from today's: fold-in items go in by id through ``recommend_ids`` (ids it does not
    know are ignored), and its returned ids are mapped to today's vocabulary (an id today's
    vocabulary lacks is ``-1``: never a hit). The candidate is re-scored the same way, so both
    numbers come from one protocol on the same users.

The first night (no champion) only (a) applies. The replaced champion gets alias ``previous``.
Every decision is recorded on the candidate version as ``gate.*`` tags, which makes a rerun for
the same date return the recorded decision instead of moving aliases again (idempotent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from vasp_model.mlops.tracking import BUNDLE_ARTIFACT, model_test_metrics

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
TAG_DECISION = "gate.decision"  # promoted | rejected
TAG_REASON = "gate.reason"
TAG_CHAMPION_AT_DECISION = "gate.champion_version"  # champion when the decision was made ("none")
TAG_PREVIOUS_CHAMPION = "gate.previous_champion"  # champion this version replaced
TAG_ROLLED_BACK = "gate.rolled_back"
TAG_METRICS = "gate.metrics"
TAG_GATE = "gate.rule"  # metric and margin the decision used


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The outcome of ``vasp promote`` for one date (printed as one JSON line)."""

    date: str
    action: str  # promoted | rejected | already_champion | unchanged | rolled_back
    promoted: bool  # is the date's candidate the champion after this call?
    candidate_version: str | None
    champion_before: str | None
    champion_after: str | None
    reason: str
    metric: str = "ndcg@100"
    margin: float = 0.0
    scores: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=float)

    @classmethod
    def unchanged(cls, date: str, candidate: str, champion: str | None, reason: str, **gate) -> GateDecision:
        """A decision that moves no alias (``gate``: ``metric``, ``margin``, ``scores``)."""
        return cls(date, "unchanged", champion == candidate, candidate, champion, champion, reason, **gate)


# -- mlflow plumbing ------------------------------------------------------------------------------


# The environment variables MLflow's URI setters write (so that subprocesses inherit the URIs).
MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_uri(tracking_uri: str) -> Iterator[Any]:
    """Point MLflow's global tracking and registry URIs at ``tracking_uri`` for a block; yields a client.

    MLflow resolves ``models:/`` downloads and fluent runs through these globals. On exit both are
    put back as they were, through the public setters: an unset tracking URI stays unset, a registry
    that followed the tracking URI follows it again, and the environment variables the setters write
    are restored (a later default is not pinned to this store).
    """
    import mlflow

    tracking_before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    registry_before = mlflow.get_registry_uri()
    registry_follows = registry_before == mlflow.get_tracking_uri()
    env_before = {name: os.environ.get(name) for name in MLFLOW_URI_ENV}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    finally:
        mlflow.set_tracking_uri(tracking_before)  # None: unset again
        mlflow.set_registry_uri(None if registry_follows else registry_before)
        for name, value in env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def get_alias(client, name: str, alias: str):
    """The model version holding ``alias`` or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def find_candidate(client, name: str, date: str):
    """The newest version of ``name`` registered for ``date`` (tag ``date``), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and tags.date='{date}'")
    except MlflowException as exc:  # registered model missing on a fresh store
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return None
        raise
    versions = [v for v in versions if v.tags.get("date") == date]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (name, alias, None); ``models:/NAME/3`` -> (name, None, "3")."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {model_uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = model_uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    if not version.isdigit():
        raise ValueError(f"model URI {model_uri!r} must name a version number or an @alias")
    return name, None, version


def resolve_version(client, model_uri: str):
    """The concrete ModelVersion a ``models:/`` URI points at right now."""
    name, alias, version = parse_model_uri(model_uri)
    if alias is not None:
        found = get_alias(client, name, alias)
        if found is None:
            raise ValueError(f"registered model {name!r} has no version with alias {alias!r}")
        return found
    return client.get_model_version(name, version)


def bundle_path_in(model_dir: str) -> str:
    """The ModelBundle directory inside a downloaded pyfunc model directory (from its MLmodel file)."""
    import yaml

    mlmodel = os.path.join(model_dir, "MLmodel")
    if os.path.exists(os.path.join(model_dir, "bundle.json")):
        return model_dir
    if not os.path.exists(mlmodel):
        raise FileNotFoundError(f"{model_dir} holds neither an MLmodel file nor a ModelBundle (bundle.json)")
    with open(mlmodel) as fh:
        conf = yaml.safe_load(fh)
    artifacts = conf.get("flavors", {}).get("python_function", {}).get("artifacts", {}) or {}
    if BUNDLE_ARTIFACT not in artifacts:
        raise FileNotFoundError(f"model at {model_dir} has no {BUNDLE_ARTIFACT!r} artifact")
    return os.path.join(model_dir, artifacts[BUNDLE_ARTIFACT]["path"])


def download_bundle(tracking_uri: str, model_uri: str, dst: str) -> tuple[str, str, str]:
    """Download a model's ModelBundle directory to ``dst``.

    ``model_uri`` is ``models:/NAME@ALIAS`` / ``models:/NAME/N`` (resolved once to a version, so an
    alias that moves meanwhile does not matter) or a local ModelBundle directory. Returns
    (bundle dir, version, resolved URI); version is ``"local"`` for a directory.
    """
    if not model_uri.startswith("models:/"):
        path = model_uri[len("file://") :] if model_uri.startswith("file://") else model_uri
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {model_uri!r} is neither a models:/ URI nor a local bundle directory")
        return bundle_path_in(os.path.abspath(path)), "local", os.path.abspath(path)
    import mlflow  # only for registry URIs: a local bundle does not pay its import (about 1 s)

    with mlflow_uri(tracking_uri) as client:
        version = resolve_version(client, model_uri)
        resolved = f"models:/{version.name}/{version.version}"
        local = mlflow.artifacts.download_artifacts(artifact_uri=resolved, dst_path=dst)
    return bundle_path_in(local), str(version.version), resolved


def load_version_bundle(client, tracking_uri: str, name: str, version: str, dst: str):
    from vasp_model.recommenders.bundle import ModelBundle

    bundle_dir, _, _ = download_bundle(tracking_uri, f"models:/{name}/{version}", dst)
    return ModelBundle.load(bundle_dir)


def logged_metrics(client, run_id: str) -> dict[str, Any]:
    """A run's metrics.json artifact (falls back to its logged MLflow metrics)."""
    with tempfile.TemporaryDirectory(prefix="vasp-metrics-") as tmp:
        try:
            path = client.download_artifacts(run_id, "metrics.json", tmp)
            with open(path) as fh:
                return json.load(fh)
        except Exception:  # noqa: BLE001 - no artifact: use the run's metrics
            pass
    data = client.get_run(run_id).data.metrics
    return {k.replace("_at_", "@"): v for k, v in data.items()}


# -- re-scoring -----------------------------------------------------------------------------------


def rescore(bundle, item_ids_today: np.ndarray, split, popularity: np.ndarray, n: int = 100) -> dict[str, float]:
    """Evaluate ``bundle`` on ``split`` (fold-in -> holdout) of today's features, mapping by item id."""
    from vasp_model.evaluation.metrics import evaluate_topk
    from vasp_model.evaluation.protocol import map_topk_ids

    fold = split.fold_in.tocsr()
    today = np.asarray(item_ids_today, dtype=object)
    lists = [today[fold.indices[fold.indptr[u] : fold.indptr[u + 1]]].tolist() for u in range(fold.shape[0])]
    rec = bundle.recommend_ids(lists, n)
    topk = map_topk_ids(rec.item_ids, today)  # ids today's vocabulary lacks -> -1 (never a hit)
    if topk.shape[1] < 100:  # small catalogs: pad with "no item"
        topk = np.concatenate([topk, np.full((topk.shape[0], 100 - topk.shape[1]), -1, np.int64)], axis=1)
    return evaluate_topk(topk, split.holdout, popularity)


# -- the gate -------------------------------------------------------------------------------------


def _tag(client, version, key: str, value: Any) -> None:
    client.set_model_version_tag(version.name, version.version, key, str(value))


def _recorded(candidate, champion_before, date, metric, margin) -> GateDecision:
    tags = candidate.tags
    try:
        scores = json.loads(tags.get(TAG_METRICS, "{}"))
    except ValueError:
        scores = {}
    promoted = tags.get(TAG_DECISION) == "promoted"
    version = str(candidate.version)
    reason = f"decided earlier ({tags.get(TAG_DECISION)}): {tags.get(TAG_REASON, '')}" + (
        "" if not promoted or champion_before == version else "; no longer champion, left as is"
    )
    return GateDecision.unchanged(date, version, champion_before, reason, metric=metric, margin=margin, scores=scores)


def _candidate_and_champion(client, registered_model: str, date: str):
    """``date``'s registered version (it must exist) and the current champion version (or None)."""
    candidate = find_candidate(client, registered_model, date)
    if candidate is None:
        raise ValueError(f"no version of registered model {registered_model!r} is tagged date={date}")
    return candidate, get_alias(client, registered_model, CHAMPION)


def promote(
    date: str,
    warehouse: str,
    tracking_uri: str,
    registered_model: str = "vasp",
    margin: float = 0.0,
    metric: str = "ndcg@100",
) -> GateDecision:
    """Run the gate for ``date``'s candidate and move aliases accordingly (see module docstring)."""
    from vasp_model.data.features import load_features

    with mlflow_uri(tracking_uri) as client:
        candidate, champion = _candidate_and_champion(client, registered_model, date)
        champ_v = str(champion.version) if champion is not None else None
        cand_v = str(candidate.version)

        if champ_v == cand_v:
            return GateDecision(
                date, "already_champion", True, cand_v, champ_v, champ_v, "candidate is the champion", metric, margin
            )
        if candidate.tags.get(TAG_ROLLED_BACK) == "true":
            reason = "candidate was promoted and rolled back; not promoting it again"
            return GateDecision.unchanged(date, cand_v, champ_v, reason, metric=metric, margin=margin)
        recorded = candidate.tags.get(TAG_DECISION)
        rule = f"{metric} margin={margin:g}"
        if recorded == "promoted" or (
            recorded == "rejected"
            and candidate.tags.get(TAG_CHAMPION_AT_DECISION) == (champ_v or "none")
            and candidate.tags.get(TAG_GATE) == rule
        ):  # same champion, same rule: the same decision (a new champion or rule re-runs the gate)
            return _recorded(candidate, champ_v, date, metric, margin)

        # (a) the candidate vs EASE on the same test users, from the run's own metrics.
        logged = logged_metrics(client, candidate.run_id)
        vasp_m = model_test_metrics(logged, "vasp").get(metric)
        ease_m = model_test_metrics(logged, "ease").get(metric)
        scores: dict[str, float] = {}
        if vasp_m is None or ease_m is None:
            ok, reason = False, f"run {candidate.run_id} has no test {metric} for vasp and ease"
        else:
            scores.update({"candidate_logged": vasp_m, "ease": ease_m})
            ok = vasp_m > ease_m + margin
            reason = (
                f"beats EASE: {metric} {vasp_m:.5f} > {ease_m:.5f} + margin {margin:g}"
                if ok
                else f"does not beat EASE: {metric} {vasp_m:.5f} <= {ease_m:.5f} + margin {margin:g}"
            )
        # (b) the candidate vs the champion, both re-scored on today's test users.
        if ok and champion is not None:
            features = load_features(warehouse, date)
            with tempfile.TemporaryDirectory(prefix="vasp-gate-") as tmp:
                champ_bundle = load_version_bundle(client, tracking_uri, registered_model, champ_v, f"{tmp}/champion")
                cand_bundle = load_version_bundle(client, tracking_uri, registered_model, cand_v, f"{tmp}/candidate")
                champ_s = rescore(champ_bundle, features.item_ids, features.test, features.popularity)[metric]
                cand_s = rescore(cand_bundle, features.item_ids, features.test, features.popularity)[metric]
            scores.update({"candidate": cand_s, "champion": champ_s})
            if cand_s > champ_s:
                reason += f"; beats champion v{champ_v} re-scored on {date}: {cand_s:.5f} > {champ_s:.5f}"
            else:
                ok = False
                reason = f"does not beat champion v{champ_v} re-scored on {date}: {cand_s:.5f} <= {champ_s:.5f}"
        elif ok:
            reason += "; no champion yet"

        _tag(client, candidate, TAG_METRICS, json.dumps(scores, sort_keys=True))
        _tag(client, candidate, TAG_CHAMPION_AT_DECISION, champ_v or "none")
        _tag(client, candidate, TAG_GATE, rule)
        _tag(client, candidate, TAG_REASON, reason[:4000])
        if ok:
            if champion is not None:
                _tag(client, candidate, TAG_PREVIOUS_CHAMPION, champ_v)
                client.set_registered_model_alias(registered_model, PREVIOUS, champ_v)
            client.set_registered_model_alias(registered_model, CHAMPION, cand_v)
            _tag(client, candidate, TAG_DECISION, "promoted")  # last: marks the promotion complete
            log.info("promote %s: v%s is champion (%s)", date, cand_v, reason)
            return GateDecision(date, "promoted", True, cand_v, champ_v, cand_v, reason, metric, margin, scores)
        _tag(client, candidate, TAG_DECISION, "rejected")
        log.warning("promote %s: v%s rejected, champion stays %s (%s)", date, cand_v, champ_v, reason)
        return GateDecision(date, "rejected", False, cand_v, champ_v, champ_v, reason, metric, margin, scores)


def rollback(date: str, tracking_uri: str, registered_model: str = "vasp") -> GateDecision:
    """Undo ``date``'s promotion: ``champion`` goes back to ``previous`` (idempotent for the date)."""
    with mlflow_uri(tracking_uri) as client:
        candidate, champion = _candidate_and_champion(client, registered_model, date)
        champ_v = str(champion.version) if champion is not None else None
        cand_v = str(candidate.version)
        if champ_v != cand_v:
            state = "was rolled back already" if candidate.tags.get(TAG_ROLLED_BACK) == "true" else "is not champion"
            return GateDecision.unchanged(
                date, cand_v, champ_v, f"{date}'s version v{cand_v} {state}; nothing to roll back"
            )
        previous = get_alias(client, registered_model, PREVIOUS)
        if previous is None:
            raise ValueError(f"registered model {registered_model!r} has no {PREVIOUS!r} version to roll back to")
        prev_v = str(previous.version)
        client.set_registered_model_alias(registered_model, CHAMPION, prev_v)
        _tag(client, candidate, TAG_ROLLED_BACK, "true")
        older = previous.tags.get(TAG_PREVIOUS_CHAMPION)
        if older and older != prev_v:
            client.set_registered_model_alias(registered_model, PREVIOUS, older)
        else:
            client.delete_registered_model_alias(registered_model, PREVIOUS)
        reason = f"rolled back v{cand_v} ({date}); champion is v{prev_v} again"
        log.warning("promote --rollback %s: %s", date, reason)
        return GateDecision(date, "rolled_back", False, cand_v, champ_v, prev_v, reason)
