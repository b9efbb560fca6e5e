"""Command-line flags shared by the stages' parsers (the ``vasp`` subcommands and ``spark-submit`` jobs)."""

from __future__ import annotations

import argparse


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
