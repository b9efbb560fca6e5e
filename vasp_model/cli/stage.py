"""What every stage subcommand shares: its flags and its run come from the stage registry, and it
prints the stage's result as one JSON line."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

from vasp_model.pipeline.stages import STAGES


def stage_command(
    name: str, show: Callable[[Any], str] = json.dumps, log: bool = False
) -> tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """``(HELP, add_arguments, run)`` of ``vasp NAME`` for the registered stage ``name``; ``show`` turns
    its result into the printed line, ``log`` turns on INFO logging for stages that narrate their work."""
    stage = STAGES[name]

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        stage.load().add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        if log:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("py4j").setLevel(logging.WARNING)  # the Spark gateway's connection bookkeeping
        print(show(stage.run_args(args)), flush=True)
        return 0

    return stage.help, add_arguments, run
