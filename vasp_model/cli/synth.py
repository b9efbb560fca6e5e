"""``vasp synth``: write a synthetic interaction file (``jobs/synth.py``); prints its summary as one JSON line."""

from __future__ import annotations

import argparse
import json

from vasp_model.pipeline.stages import STAGES

STAGE = STAGES["synth"]
HELP = STAGE.help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    STAGE.load().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(STAGE.run_args(args)))
    return 0
