"""``vasp train``: fit VASP on ``features/dt=D`` and publish ``models/dt=D`` (``vasp_model.pipeline.training``).

Prints one final JSON line with the test metrics.
"""

from __future__ import annotations

import argparse
import json

from vasp_model.pipeline.stages import STAGES

STAGE = STAGES["train"]
HELP = STAGE.help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    STAGE.load().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(STAGE.run_args(args), sort_keys=True, default=float), flush=True)
    return 0
