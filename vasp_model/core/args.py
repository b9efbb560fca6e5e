"""Command-line flags shared by the stages' parsers (the ``vasp`` subcommands and ``spark-submit`` jobs)."""

from __future__ import annotations

import argparse

from vasp_model.core.defaults import EXCLUDE_RULES


def add_warehouse_argument(parser: argparse.ArgumentParser) -> None:
    """``--warehouse``, shared by every subcommand that reads or writes the warehouse."""
    parser.add_argument("--warehouse", default=None, help="Warehouse root (default: $VASP_WAREHOUSE or ./warehouse).")


def add_tracking_argument(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri``, shared by every subcommand that talks to MLflow."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: SQLite under the run dir, $VASP_TRACKING_URI).",
    )


def add_exclude_argument(parser: argparse.ArgumentParser) -> None:
    """``--exclude``, shared by the subcommands that write lists (``vasp score``, ``vasp train``'s test lists)."""
    parser.add_argument(
        "--exclude",
        default=None,
        choices=EXCLUDE_RULES,
        help="What a user's list leaves out: every item the user interacted with, whatever the rating (all), "
        "only the positives the model reads (positives), or nothing (none). Default: $VASP_EXCLUDE or all.",
    )
