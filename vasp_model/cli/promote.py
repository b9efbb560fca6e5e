"""``vasp promote``: gate the date's registered version into alias ``champion`` (or roll it back).

Prints one JSON line with the decision. A rejected candidate is not an error (exit 0): the
champion stays and the reason is recorded on the version (tag ``gate.reason``) and logged.
"""

from __future__ import annotations

import argparse
import logging

from vasp_model.pipeline.stages import STAGES

STAGE = STAGES["promote"]
HELP = STAGE.help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    STAGE.load().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(STAGE.run_args(args).to_json(), flush=True)
    return 0
