"""``vasp score``: the Spark scoring job of one date (``jobs/score.py``); prints its counts as one JSON line."""

from __future__ import annotations

import argparse
import json
import logging

from vasp_model.pipeline.stages import STAGES

STAGE = STAGES["score"]
HELP = STAGE.help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    STAGE.load().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(STAGE.run_args(args)), flush=True)
    return 0
