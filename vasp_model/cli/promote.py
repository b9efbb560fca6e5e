"""``vasp promote``: gate the date's registered version into alias ``champion`` (or roll it back).

Prints one JSON line with the decision. A rejected candidate is not an error (exit 0): the
champion stays and the reason is recorded on the version (tag ``gate.reason``) and logged.
"""

from __future__ import annotations

import argparse
import logging

from vasp_model.core import defaults
from vasp_model.core.settings import build_config
from vasp_model.data import layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vasp_model.cli import add_tracking_argument, add_warehouse_argument

    parser.add_argument("--date", required=True, help="Logical date YYYY-MM-DD whose trained version is gated.")
    add_warehouse_argument(parser)
    add_tracking_argument(parser)
    parser.add_argument(
        "--margin", type=float, default=None, help="Absolute nDCG@100 the candidate must beat EASE by (default 0)."
    )
    parser.add_argument("--registered-model", default=None, help="Registered model name (default: vasp).")
    parser.add_argument(
        "--rollback", action="store_true", help="Undo this date's promotion: move 'champion' back to 'previous'."
    )


def run(args: argparse.Namespace) -> int:
    from vasp_model.mlops import registry
    from vasp_model.mlops.tracking import TrackingConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    date = layout.check_date(args.date)
    cfg = build_config(
        TrackingConfig,
        {"tracking_uri": args.tracking_uri, "gate_margin": args.margin, "registered_model": args.registered_model},
    )
    if args.rollback:
        decision = registry.rollback(date, cfg.tracking_uri, cfg.registered_model)
    else:
        warehouse = args.warehouse or defaults.default_warehouse()
        decision = registry.promote(
            date, warehouse, cfg.tracking_uri, cfg.registered_model, margin=cfg.gate_margin, metric=cfg.gate_metric
        )
    print(decision.to_json(), flush=True)
    return 0
