"""``vasp build``: the Spark feature build of one date (``jobs/build_matrices.py``); prints its summary."""

from __future__ import annotations

import argparse
import json

from vasp_model.pipeline.stages import STAGES

STAGE = STAGES["build"]
HELP = STAGE.help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    STAGE.load().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(STAGE.run_args(args)))
    return 0
