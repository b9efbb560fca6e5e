"""The ``vasp`` command: one subcommand per pipeline stage.

Plus ``recommend`` (print a published list), ``compare`` (two trainings' scored users, with intervals)
and ``run`` (the nightly DAG end to end). Each
subcommand is a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; a
stage's flags, config and function come from the stage registry (``vasp_model.pipeline.stages``).
Heavy libraries are imported only when a subcommand runs, so ``vasp --help`` is fast and
``vasp train`` never imports Spark.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from vasp_model.cli import build, compare, promote, recommend, report, run, score, synth, train, tune
from vasp_model.core import defaults
from vasp_model.core.errors import CLEAR_ERRORS

SUBCOMMANDS: dict[str, ModuleType] = {
    "synth": synth,
    "build": build,
    "tune": tune,
    "train": train,
    "promote": promote,
    "score": score,
    "report": report,
    "recommend": recommend,
    "compare": compare,
    "run": run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vasp", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=command.HELP, description=command.HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # prints usage / help / the error
        return 2
    name, rest = argv[0], argv[1:]
    command = SUBCOMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"vasp {name}", description=command.HELP)
    command.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        _configure_logging()
        defaults.quiet_tensorflow()
        return int(command.run(args) or 0)
    except CLEAR_ERRORS as exc:  # bad input or config, a full disk, a locked date, the tracking server: one line
        print(f"vasp {name}: error: {exc}", file=sys.stderr)
        logging.getLogger("vasp").debug("vasp %s failed", name, exc_info=exc)  # VASP_LOG_LEVEL=DEBUG: the trace
        return 1


def _configure_logging() -> None:
    """Log at ``VASP_LOG_LEVEL`` (e.g. DEBUG: an error's traceback too) when it is set."""
    level = os.environ.get("VASP_LOG_LEVEL")
    if not level:
        return
    if not isinstance(logging.getLevelName(level.upper()), int):
        raise ValueError(f"VASP_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
