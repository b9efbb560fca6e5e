"""Stage ``promote``: gate the date's registered version into alias ``champion`` (or roll it back).

A rejected candidate is a decision, not an error: the champion stays and the reason is
recorded on the version (tag ``gate.reason``). With no champion at all, the night is served by
the fallback (the date's closed-form EASE, gated into a registered model of its own, else
popularity) and the decision's ``serving`` and reason say so. A past date (a later night is
recorded) moves no alias (decision ``backfill``); its ``serving`` is what the scoring job will pin.

``--rollback --rescore``: after the rollback, the latest night (the newest date with published
lists) is scored again with the champion it now names, with that night's ``top_n`` and
``exclude``, so what is served matches the alias; its record (the lists' manifest) follows.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from vasp_model.core import defaults
from vasp_model.core.args import add_tracking_argument, add_warehouse_argument
from vasp_model.data import layout
from vasp_model.data.locks import locked

if TYPE_CHECKING:  # pragma: no cover
    from vasp_model.mlops.registry import GateDecision
    from vasp_model.mlops.tracking import TrackingConfig


@dataclasses.dataclass(frozen=True)
class PromoteStageConfig:
    """Stage ``promote``: gate ``date``'s version (``rollback``: move ``champion`` back to ``previous``)."""

    date: str
    warehouse: str
    tracking: TrackingConfig
    rollback: bool = False
    rescore: bool = False  # with rollback: score the latest night again with the rolled-back champion

    def __post_init__(self) -> None:
        layout.check_date(self.date)
        if self.rescore and not self.rollback:
            raise ValueError("--rescore goes with --rollback (it re-scores the latest night after the rollback)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="Logical date YYYY-MM-DD whose trained version is gated.")
    add_warehouse_argument(parser)
    add_tracking_argument(parser)
    parser.add_argument(
        "--margin", type=float, default=None, help="Absolute nDCG@100 the candidate must beat EASE by (default 0)."
    )
    parser.add_argument(
        "--require-significant",
        action="store_true",
        default=None,
        help="The paired-bootstrap intervals must clear the gate too: the lower bound of VASP - EASE above the "
        "margin, and of candidate - champion above 0 (default: off, or VASP_GATE_REQUIRE_SIGNIFICANT).",
    )
    parser.add_argument("--registered-model", default=None, help="Registered model name (default: vasp).")
    parser.add_argument(
        "--ease-registered-model",
        default=None,
        help="Registered model of the EASE fallback, which serves while the registered model has no champion "
        "(default: vasp-ease; '': no EASE fallback, popularity serves).",
    )
    parser.add_argument(
        "--rollback", action="store_true", help="Undo this date's promotion: move 'champion' back to 'previous'."
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="With --rollback: then score the latest night (the newest date with published lists) again with the "
        "rolled-back champion, so what is served matches the alias (Spark, in this process).",
    )


def config_from_args(args: argparse.Namespace) -> PromoteStageConfig:
    """The stage's config from the flags of :func:`add_arguments` (unset flags: ``VASP_*`` env, then defaults)."""
    from vasp_model.core.settings import build_config
    from vasp_model.mlops.tracking import TrackingConfig

    tracking = build_config(
        TrackingConfig,
        {
            "tracking_uri": args.tracking_uri,
            "gate_margin": args.margin,
            "gate_require_significant": args.require_significant,
            "registered_model": args.registered_model,
            "ease_registered_model": args.ease_registered_model,
        },
    )
    warehouse = args.warehouse or defaults.default_warehouse()
    return PromoteStageConfig(args.date, warehouse, tracking, args.rollback, args.rescore)


@locked("promote")
def promote_stage(config: PromoteStageConfig) -> GateDecision:
    """Stage ``promote``: run the registry gate for ``config.date`` (or roll it back); returns the decision,
    which says what serves the date (``serving``) unless it is a rollback."""
    from vasp_model.data.features import require_features
    from vasp_model.mlops import registry, server

    tracking, date = config.tracking, config.date
    server.ready_for(tracking.tracking_uri, f"promoting {date}")
    if not config.rollback:  # the gate re-scores on the date's features: say so before the registry
        require_features(config.warehouse, date)
    if config.rollback:
        with server.tracking_step(tracking.tracking_uri, f"rolling back the promotion of {date}"):
            decision = registry.rollback(date, tracking.tracking_uri, tracking.registered_model)
        return rescore_latest(config, decision) if config.rescore else decision
    with server.tracking_step(tracking.tracking_uri, f"gating the candidate of {date} (registry, aliases)") as step:
        decision = registry.promote(
            date,
            config.warehouse,
            tracking.tracking_uri,
            tracking.registered_model,
            margin=tracking.gate_margin,
            metric=tracking.gate_metric,
            require_significant=tracking.gate_require_significant,
            protocol=tracking.gate_protocol,
        )
        step.doing = f"settling what serves {date} (the fallback's registry, aliases)"
        decision = registry.promote_fallback(
            decision,
            config.warehouse,
            tracking.tracking_uri,
            tracking.registered_model,
            tracking.ease_registered_model,
            tracking.gate_metric,
            tracking.gate_protocol,
        )
        if decision.action == "backfill":
            step.doing = f"finding the version that served {date}"
            return _served_as_recorded(config, decision)
        return decision


def _served_as_recorded(config: PromoteStageConfig, decision: GateDecision) -> GateDecision:
    """A backfill's decision with what the scoring job pins for its date (unchanged when nothing is pinned:
    the current champion, or the fallback, serves)."""
    from vasp_model.mlops import registry

    tracking = config.tracking
    _, pin, _ = registry.serving_for_date(
        tracking.tracking_uri,
        config.warehouse,
        config.date,
        registry.champion_uri(tracking.registered_model),
        tracking.ease_registered_model,
    )
    if pin is None:
        return decision
    serving = {k: pin.serving.get(k) for k in ("kind", "registered_model", "version")}
    return dataclasses.replace(decision, serving=serving, reason=f"{decision.reason}; {pin.reason}")


def rescore_latest(config: PromoteStageConfig, decision: GateDecision) -> GateDecision:
    """Score the latest night again with the champion as it is now (after ``decision``, a rollback), with
    that night's ``top_n`` and ``exclude``; ``decision`` with the re-scored night's ``serving``."""
    import os
    import sys

    from vasp_jobs.common.spark import job_spark_config
    from vasp_jobs.score import APP_NAME, ScoreStageConfig, score_stage
    from vasp_model.data import storage
    from vasp_model.mlops import history, registry

    nights = history.recorded_dates(config.warehouse)
    if not nights:
        raise FileNotFoundError(f"no published lists under {config.warehouse}/recommendations: nothing to re-score")
    date = nights[-1]
    lists = storage.read_json(f"{layout.recommendations_dir(config.warehouse, date)}/{storage.MANIFEST}")
    tracking = config.tracking
    # the champion's version itself: the latest night with lists may be past (a later night trained and
    # went through the gate but never scored), and a past date asked for the champion is pinned
    champion = registry.resolve_version(
        registry.client_for(tracking.tracking_uri), registry.champion_uri(tracking.registered_model)
    )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # in-process Spark: workers run this interpreter
    result = score_stage(
        ScoreStageConfig(
            date,
            config.warehouse,
            tracking.tracking_uri,
            job_spark_config(APP_NAME),
            model_uri=f"models:/{champion.name}/{champion.version}",
            top_n=int(lists.get("top_n", 100)),
            exclude=str(lists.get("exclude", defaults.DEFAULT_EXCLUDE)),
            ease_registered_model=tracking.ease_registered_model,
        )
    )
    serving = dict(result["serving"])
    reason = f"{decision.reason}; re-scored {date} with {history.describe(serving)}"
    return dataclasses.replace(decision, serving=serving, reason=reason)
