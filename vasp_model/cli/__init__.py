"""The ``vasp`` command: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``vasp --help`` is fast and ``vasp train`` never imports Spark.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("jobs.synth", "Write a synthetic interaction file with real latent structure."),
    "build": ("jobs.build_matrices", "Spark job: build features/dt=D (matrices, splits, A/B copies)."),
    "train": ("vasp_model.cli.train", "Train VASP on features/dt=D and evaluate it against EASE and popularity."),
    "promote": ("vasp_model.cli.promote", "Register the date's model and gate it into the 'champion' alias."),
    "score": ("jobs.score", "Spark job: write top-N recommendations/dt=D for every user."),
    "recommend": ("vasp_model.cli.recommend", "Print one user's published recommendation list."),
    "run": ("vasp_model.cli.run", "Run the nightly Airflow DAG end to end for one logical date."),
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vasp", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # prints usage / help / the error
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"vasp {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input or config: one clear line, non-zero exit
        print(f"vasp {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
