"""``vasp build``: the Spark feature build of one date (``jobs/build_matrices.py``); prints its summary."""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("build", log=True)
