"""Registry I/O of the promotion gate: find the date's version, read aliases and scores, move aliases.

:func:`promote` and :func:`rollback` read the registry, ask :mod:`vasp_model.mlops.gate` (the rule,
pure) for the outcome and write it back (aliases, ``gate.*`` tags). Re-scoring for the gate: the
champion's vocabulary may differ from today's, so fold-in items go in by id through
``recommend_ids`` (ids it does not know are ignored) and its returned ids are mapped to today's
vocabulary (an id today's vocabulary lacks is ``-1``: never a hit). The candidate is re-scored the
same way, so both numbers come from one protocol on the same users, and their per-user arrays give
the paired-bootstrap interval of candidate − champion; the interval of VASP − EASE is the one the
candidate's training run logged.

While the registered model has no champion, :func:`promote_fallback` gates the date's closed-form
EASE into a registered model of its own and says what serves the date (that EASE's champion, else
popularity); :func:`serving_uri` is what the scoring job loads by the same rule.

A past date (a later night is recorded, :mod:`vasp_model.mlops.history`) moves no alias: its
candidate stays registered and the gate records ``backfill`` (:func:`gate.backfill`); scoring it
asks :func:`serving_for_date`, which pins the version that served it.

Every MLflow call here names the store (``tracking_uri``): MLflow's global URIs are left alone, but
for logging and registering the fallback's model (a fluent API, and a registry lookup through the
global URI: pointed at the store for those calls only).
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from vasp_model.data import layout
from vasp_model.mlops import gate, history, integrity

log = logging.getLogger(__name__)


def client_for(tracking_uri: str):
    """An MlflowClient whose tracking and model registry are both ``tracking_uri``."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)


def aliases_of(client, name: str) -> dict[str, str]:
    """``{alias: version}`` of registered model ``name`` (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def find_candidate(client, name: str, date: str):
    """The newest version of ``name`` registered for ``date`` (tag ``date``), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        versions = client.search_model_versions(f"name='{name}' and tags.date='{date}'")
    except MlflowException as exc:  # registered model missing on a fresh store
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    versions = [v for v in versions if v.tags.get("date") == date]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def gated_dates(client, name: str) -> list[str]:
    """The dates of the versions of ``name`` that went through the gate (tag ``gate.decision``), oldest
    first (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return []
        raise
    return sorted({v.tags["date"] for v in versions if v.tags.get("date") and v.tags.get(gate.TAG_DECISION)})


def later_night(client, warehouse: str, name: str, date: str) -> str | None:
    """The latest recorded night after ``date`` (published lists, or a version of ``name`` tagged with
    its date that went through the gate); None: ``date`` is not a past date."""
    return history.later_night(date, [*history.recorded_dates(warehouse), *gated_dates(client, name)])


def champion_uri(registered_model: str) -> str:
    """``models:/NAME@champion``: what serves by default."""
    return f"models:/{registered_model}@{gate.CHAMPION}"


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
        version = aliases_of(client, name).get(alias)
        if version is None:
            raise ValueError(f"registered model {name!r} has no version with alias {alias!r}")
    return client.get_model_version(name, version)


def bundle_path_in(model_dir: str) -> str:
    """The ModelBundle directory inside a downloaded pyfunc model directory (from its MLmodel file)."""
    if os.path.exists(os.path.join(model_dir, "bundle.json")):
        return model_dir
    if not os.path.exists(os.path.join(model_dir, "MLmodel")):
        raise FileNotFoundError(f"{model_dir} holds neither an MLmodel file nor a ModelBundle (bundle.json)")
    from mlflow.models import Model

    from vasp_model.mlops.pyfunc import BUNDLE_ARTIFACT

    pyfunc = Model.load(model_dir).flavors.get("python_function", {})
    artifacts = pyfunc.get("artifacts") or {}
    if BUNDLE_ARTIFACT not in artifacts:
        raise FileNotFoundError(f"model at {model_dir} has no {BUNDLE_ARTIFACT!r} artifact")
    return os.path.join(model_dir, artifacts[BUNDLE_ARTIFACT]["path"])


def download_bundle(tracking_uri: str, model_uri: str, dst: str) -> tuple[str, str, str]:
    """Download a model's ModelBundle directory to ``dst``.

    ``model_uri`` is ``models:/NAME@ALIAS`` / ``models:/NAME/N`` (resolved once to a version, so an
    alias that moves meanwhile does not matter) or a local ModelBundle directory. Returns
    (bundle dir, version, resolved URI); version is ``"local"`` for a directory. A registered
    version's files are checked against the digest recorded at its registration
    (:func:`vasp_model.mlops.integrity.verify_bundle`: a mismatch is refused).
    """
    if not model_uri.startswith("models:/"):
        path = model_uri[len("file://") :] if model_uri.startswith("file://") else model_uri
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {model_uri!r} is neither a models:/ URI nor a local bundle directory")
        return bundle_path_in(os.path.abspath(path)), "local", os.path.abspath(path)
    import mlflow  # only for registry URIs: a local bundle does not pay its import

    client = client_for(tracking_uri)
    version = resolve_version(client, model_uri)
    # The version's own artifact location: a models:/ URI would be resolved against MLflow's global registry.
    source = client.get_model_version_download_uri(version.name, version.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri)
    resolved = f"models:/{version.name}/{version.version}"
    bundle_dir = bundle_path_in(local)
    integrity.verify_bundle(bundle_dir, version.tags, resolved)
    return bundle_dir, str(version.version), resolved


def _load_version_bundle(tracking_uri: str, name: str, version: str, dst: str):
    from vasp_model.recommenders.bundle import load_bundle

    bundle_dir, _, _ = download_bundle(tracking_uri, f"models:/{name}/{version}", dst)
    return load_bundle(bundle_dir)


# -- re-scoring -----------------------------------------------------------------------------------


def rescore(bundle, item_ids_today: np.ndarray, split, popularity: np.ndarray, n: int = 100) -> dict[str, float]:
    """Evaluate ``bundle`` on ``split`` (fold-in -> holdout) of today's features, mapping by item id."""
    return rescore_per_user(bundle, item_ids_today, split, popularity, n)[0]


def rescore_per_user(bundle, item_ids_today: np.ndarray, split, popularity: np.ndarray, n: int = 100):
    """:func:`rescore`'s metrics and the per-user accuracy arrays they average (rows: ``split``'s users)."""
    from vasp_model.evaluation.metrics import evaluate_topk_per_user
    from vasp_model.evaluation.protocol import map_topk_ids

    fold = split.fold_in.tocsr()
    today = np.asarray(item_ids_today, dtype=object)
    lists = [today[fold.indices[fold.indptr[u] : fold.indptr[u + 1]]].tolist() for u in range(fold.shape[0])]
    rec = bundle.recommend_ids(lists, n)
    topk = map_topk_ids(rec.item_ids, today)  # ids today's vocabulary lacks -> -1 (never a hit)
    if topk.shape[1] < 100:  # small catalogs: pad with "no item"
        topk = np.concatenate([topk, np.full((topk.shape[0], 100 - topk.shape[1]), -1, np.int64)], axis=1)
    return evaluate_topk_per_user(topk, split.holdout, popularity)


# -- the gate -------------------------------------------------------------------------------------


def _version(model_version) -> gate.Version:
    return gate.Version(
        model=model_version.name,
        version=str(model_version.version),
        run_id=model_version.run_id or "",
        tags=dict(model_version.tags),
    )


def _candidate_and_aliases(client, registered_model: str, date: str) -> tuple[gate.Version, gate.Aliases]:
    """``date``'s registered version (it must exist) and who holds ``champion`` / ``previous``."""
    candidate = find_candidate(client, registered_model, date)
    if candidate is None:
        raise ValueError(f"no version of registered model {registered_model!r} is tagged date={date}")
    aliases = aliases_of(client, registered_model)
    return _version(candidate), gate.Aliases(aliases.get(gate.CHAMPION), aliases.get(gate.PREVIOUS))


def _logged(
    client, run_id: str, metric: str, compare: tuple[str, str] = gate.VASP_VS_EASE, protocol: str = "vae_cf"
) -> gate.Logged:
    """The candidate's and its baseline's test ``metric`` (``compare``: their report entries) under
    ``protocol`` and the interval of their difference (None when the run logged none: intervals are
    logged for vae_cf's test users only), from the candidate's run."""
    from vasp_model.evaluation.metrics import PROTOCOL_SECTIONS, model_test_metrics
    from vasp_model.mlops.tracking import logged_interval, logged_report

    report = logged_report(client, run_id)
    section = PROTOCOL_SECTIONS[protocol]
    candidate, baseline = (model_test_metrics(report, name, section).get(metric) for name in compare)
    interval = logged_interval(client, run_id, metric, "-".join(compare)) if protocol == "vae_cf" else None
    return gate.Logged(candidate, baseline, gate.Bounds(*interval) if interval is not None else None, compare)


def _head_to_head(
    tracking_uri: str,
    warehouse: str,
    date: str,
    candidate: gate.Version,
    champion: str,
    metric: str,
    protocol: str = "vae_cf",
):
    """Candidate and champion re-scored on ``date``'s test users (``temporal``: its next-period users),
    with the paired interval of their difference."""
    from vasp_model.data.features import load_features
    from vasp_model.evaluation.bootstrap import paired_bootstrap

    features = load_features(warehouse, date)
    split = features.test if protocol == "vae_cf" else features.temporal
    if split is None:
        raise ValueError(
            f"the gate's protocol is {protocol} but features of {date} have no temporal holdout "
            "(build with --temporal-holdout-days)"
        )
    scores, per_user = {}, {}
    with tempfile.TemporaryDirectory(prefix="vasp-gate-") as tmp:
        for step, (role, version) in enumerate((("champion", champion), ("candidate", candidate.version)), 1):
            log.info(
                "gate %s: re-scoring the %s v%s on %d %s users (%d/2)",
                date,
                role,
                version,
                split.n_users,
                protocol,
                step,
            )
            bundle = _load_version_bundle(tracking_uri, candidate.model, version, f"{tmp}/{role}")
            scores[role], per_user[role] = rescore_per_user(bundle, features.item_ids, split, features.popularity)
    diff = paired_bootstrap(per_user["candidate"], per_user["champion"])[metric]
    return gate.Rescored(scores["candidate"][metric], scores["champion"][metric], gate.Bounds(diff.low, diff.high))


def _apply(client, candidate: gate.Version, before: gate.Aliases, outcome: gate.Outcome) -> None:
    """Write ``outcome``: its tags on the candidate, then the aliases, then the decision tag (last: it
    marks the outcome complete). A promotion hands champion's version to ``previous`` and a rollback
    hands ``previous``'s version to champion: the alias that copies moves first, so that a crash in
    between loses no version and a rerun completes the move."""
    name, version = candidate.model, candidate.version
    tags = dict(outcome.tags)
    decision = tags.pop(gate.TAG_DECISION, None)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    after = outcome.aliases
    moves = [(gate.PREVIOUS, before.previous, after.previous), (gate.CHAMPION, before.champion, after.champion)]
    if outcome.decision.action == "rolled_back":
        moves.reverse()
    for alias, old, new in moves:
        if new == old:
            continue
        if new is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, new)
    if decision is not None:
        client.set_model_version_tag(name, version, gate.TAG_DECISION, decision)


def promote(
    date: str,
    warehouse: str,
    tracking_uri: str,
    registered_model: str = "vasp",
    margin: float = 0.0,
    metric: str = gate.GATE_METRIC,
    require_significant: bool = False,
    compare: tuple[str, str] = gate.VASP_VS_EASE,
    protocol: str = "vae_cf",
) -> gate.GateDecision:
    """Run the gate for ``date``'s candidate and move aliases accordingly (see :mod:`gate`); ``compare``:
    which entries of the run's report are the candidate and the baseline it must beat."""
    client = client_for(tracking_uri)
    rule = gate.Rule(metric, margin, require_significant, protocol)
    candidate, aliases = _candidate_and_aliases(client, registered_model, date)
    outcome = gate.settled(date, rule, candidate, aliases)
    if outcome is None and (later := later_night(client, warehouse, registered_model, date)):
        outcome = gate.backfill(date, rule, candidate, aliases, later)
    if outcome is None:  # not decided yet: score it
        logged = _logged(client, candidate.run_id, metric, compare, protocol)
        outcome = gate.decide(date, rule, candidate, aliases, logged)
        if isinstance(outcome, gate.NeedsRescore):
            rescored = _head_to_head(tracking_uri, warehouse, date, candidate, outcome.champion, metric, protocol)
            outcome = gate.decide(date, rule, candidate, aliases, logged, rescored)
    _apply(client, candidate, aliases, outcome)
    decision = outcome.decision
    if decision.action == "promoted":
        log.info("promote %s: v%s is champion (%s)", date, decision.candidate_version, decision.reason)
    elif decision.action == "backfill":
        log.warning("promote %s: %s", date, decision.reason)
    elif decision.action == "rejected":
        log.warning(
            "promote %s: v%s rejected, champion stays %s (%s)",
            date,
            decision.candidate_version,
            decision.champion_before,
            decision.reason,
        )
    return decision


def rollback(date: str, tracking_uri: str, registered_model: str = "vasp") -> gate.GateDecision:
    """Undo ``date``'s promotion: ``champion`` goes back to ``previous`` (idempotent for the date)."""
    client = client_for(tracking_uri)
    candidate, aliases = _candidate_and_aliases(client, registered_model, date)
    previous = None
    if aliases.previous is not None:
        previous = _version(client.get_model_version(registered_model, aliases.previous))
    outcome = gate.rollback(date, candidate, aliases.champion, previous)
    _apply(client, candidate, aliases, outcome)
    if outcome.decision.action == "rolled_back":
        log.warning("promote --rollback %s: %s", date, outcome.decision.reason)
    return outcome.decision


# -- the fallback: what serves while the registered model has no champion -------------------------

EASE_NAME_IN_RUN = "ease"  # the EASE model's name among its training run's logged models
LOGGED_MODEL_PREFIX = "models:/m-"  # MLflow 3's logged models: models:/m-<id>


def logged_model_name(client, version) -> str:
    """The name a registered ``version``'s model was logged under in its run (``model``, ``ease``...): that of
    its MLflow 3 logged model (``model_id``, or a ``models:/m-<id>`` source), else the last part of a
    ``runs:/RUN_ID/NAME`` source."""
    source = (version.source or "").rstrip("/")
    model_id = getattr(version, "model_id", None)
    if not model_id and source.startswith(LOGGED_MODEL_PREFIX):
        model_id = source[len("models:/") :]
    return client.get_logged_model(model_id).name if model_id else source.rsplit("/", 1)[-1]


def promote_fallback(
    decision: gate.GateDecision,
    warehouse: str,
    tracking_uri: str,
    registered_model: str = "vasp",
    ease_model: str = gate.EASE_REGISTERED_MODEL,
    metric: str = gate.GATE_METRIC,
    protocol: str = "vae_cf",
) -> gate.GateDecision:
    """``decision`` (the gate's for its date) with what serves that date (:func:`gate.serving_after`).

    With no champion of ``registered_model``, the date's closed-form EASE (``models/dt=D/ease``, fitted
    by the candidate's training) goes through the gate of its own registered model ``ease_model``:
    registered on first use (logged into the candidate's training run), it becomes that model's
    champion when it beats popularity on the run's test users and the EASE champion re-scored.
    ``ease_model`` empty: popularity serves.
    """
    date = decision.date
    if decision.champion_after is not None or not ease_model:
        return gate.serving_after(decision, registered_model)
    client = client_for(tracking_uri)
    if find_candidate(client, ease_model, date) is None:
        run_id = client.get_model_version(registered_model, decision.candidate_version).run_id
        if not _register_ease(client, tracking_uri, warehouse, date, ease_model, run_id):
            champion = aliases_of(client, ease_model).get(gate.CHAMPION)
            reason = f"the training of {date} published no EASE bundle ({layout.ease_bundle_dir(warehouse, date)})"
            fallback = gate.GateDecision(date, "unchanged", False, None, champion, champion, reason, metric)
            return gate.serving_after(decision, registered_model, fallback, ease_model)
    fallback = promote(
        date, warehouse, tracking_uri, ease_model, metric=metric, compare=gate.EASE_VS_POPULARITY, protocol=protocol
    )
    return gate.serving_after(decision, registered_model, fallback, ease_model)


def _register_ease(client, tracking_uri: str, warehouse: str, date: str, name: str, run_id: str) -> bool:
    """Log ``date``'s EASE bundle (``models/dt=D/ease``) into training run ``run_id`` (its model ``ease``)
    and register it as a version of ``name``, tagged like that run's VASP version; False when there is
    no bundle."""
    import mlflow

    from vasp_model.data import storage
    from vasp_model.data.features import lineage, read_manifest
    from vasp_model.mlops.tracking import log_bundle_model, logged_report, mlflow_uri, register_version
    from vasp_model.recommenders.bundle import META_FILE

    path = storage.local_path(layout.ease_bundle_dir(warehouse, date))
    if not os.path.exists(os.path.join(path, META_FILE)):
        log.warning("no EASE bundle at %s: the fallback cannot register %s's EASE", path, date)
        return False
    features_dir = layout.features_dir(warehouse, date)
    origin = lineage(read_manifest(features_dir), features_dir)
    report = logged_report(client, run_id)
    # MLflow's registry looks the logged model up through its global URI: both calls run pointed at the store
    with mlflow_uri(tracking_uri):
        with mlflow.start_run(run_id=run_id):  # the run that fitted and measured it
            info = log_bundle_model(path, name=EASE_NAME_IN_RUN)
        register_version(client, name, info.model_uri, run_id, date, origin, report, path, model_id=info.model_id)
    return True


def serving_uri(tracking_uri: str, model_uri: str, ease_model: str = gate.EASE_REGISTERED_MODEL) -> str | None:
    """The model that serves when ``model_uri`` is asked for: ``model_uri`` itself, unless it names the
    champion of a registered model that has none; then the champion of the fallback ``ease_model`` when
    it has one, else None (popularity serves). A version number or a local bundle is served as given."""
    if not model_uri.startswith("models:/"):
        return model_uri
    name, alias, _ = parse_model_uri(model_uri)
    if alias != gate.CHAMPION:
        return model_uri
    client = client_for(tracking_uri)
    if gate.CHAMPION in aliases_of(client, name):
        return model_uri
    if ease_model and gate.CHAMPION in aliases_of(client, ease_model):
        log.warning("registered model %r has no champion: serving the fallback %s@%s", name, ease_model, gate.CHAMPION)
        return f"models:/{ease_model}@{gate.CHAMPION}"
    log.warning("registered model %r has no champion and no fallback EASE does: serving popularity", name)
    return None


def serving_for_date(
    tracking_uri: str, warehouse: str, date: str, model_uri: str, ease_model: str = gate.EASE_REGISTERED_MODEL
) -> tuple[str | None, history.Pin | None, str]:
    """(the model that serves ``date`` when ``model_uri`` is asked for, the pin it comes from, why; "" when
    nothing special applies).

    A registered model's champion asked for a past date (:func:`later_night`) gives the version that
    served it (:func:`history.pinned`; None: popularity); otherwise, and when no night at or before
    the date is recorded, :func:`serving_uri` (the champion now, or the fallback), pin None.
    """
    reason = ""
    if model_uri.startswith("models:/"):
        name, alias, _ = parse_model_uri(model_uri)
        if alias == gate.CHAMPION:
            later = later_night(client_for(tracking_uri), warehouse, name, date)
            if later is not None:
                pin = history.pinned(warehouse, date, later)
                if pin is not None:
                    log.warning("%s", pin.reason)
                    return pin.model_uri, pin, pin.reason
                reason = (
                    f"{date} is a past date (a later night, {later}, is recorded) but no night at or before it is: "
                    "scoring with the current champion"
                )
                log.warning("%s", reason)
    return serving_uri(tracking_uri, model_uri, ease_model), None, reason
