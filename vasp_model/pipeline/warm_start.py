"""Which trained model a candidate starts from (``vasp train --warm-start``).

``none``: a cold start. ``champion``: the registered model's champion, when it was trained for an
earlier date than the one being trained (a backfill or a rerun never starts from a model that saw
the date's own or later data); with no such champion the run warns and starts cold. Anything else
is a ModelBundle directory (or a ``models:/`` URI) that must exist and hold a VASP.
"""

from __future__ import annotations

import logging

from vasp_model.mlops import gate
from vasp_model.train.warm_start import ArchitectureMismatch, WarmStartSource

log = logging.getLogger(__name__)

NONE = "none"
CHAMPION = "champion"


def check_spec(spec: str) -> None:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"warm_start must be {NONE!r}, {CHAMPION!r} or a model bundle directory, got {spec!r}")


def resolve(spec: str, date: str, tracking_uri: str, registered_model: str, dst: str) -> WarmStartSource | None:
    """The model ``spec`` names, downloaded under ``dst`` and loaded; None for a cold start."""
    from vasp_model.mlops import registry

    check_spec(spec)
    if spec == NONE:
        return None
    trained_for = None
    if spec == CHAMPION:
        client = registry.client_for(tracking_uri)
        version = registry.aliases_of(client, registered_model).get(gate.CHAMPION)
        if version is None:
            log.warning("warm start: registered model %r has no champion yet: training cold", registered_model)
            return None
        trained_for = client.get_model_version(registered_model, version).tags.get("date") or None
        if trained_for is not None and trained_for >= date:
            log.warning(
                "warm start: champion %s v%s was trained for %s, not before %s (a backfill or rerun): training cold",
                registered_model,
                version,
                trained_for,
                date,
            )
            return None
        spec = f"models:/{registered_model}/{version}"
    bundle_dir, version, uri = registry.download_bundle(tracking_uri, spec, dst)
    return _load(bundle_dir, uri, version, trained_for)


def _load(bundle_dir: str, uri: str, version: str, trained_for: str | None) -> WarmStartSource:
    from vasp_model.nn.model import VASP
    from vasp_model.recommenders.bundle import ModelBundle, read_metadata

    kind = read_metadata(bundle_dir)["kind"]
    if kind != ModelBundle.kind:
        raise ArchitectureMismatch(f"warm start from {uri}: it holds a {kind!r} bundle, not a VASP")
    bundle = ModelBundle.load(bundle_dir, host_ease=False)
    if not isinstance(bundle.model, VASP):
        raise ArchitectureMismatch(f"warm start from {uri}: it holds a {type(bundle.model).__name__}, not a VASP")
    return WarmStartSource(bundle.model, bundle.item_ids, uri, version, trained_for)
