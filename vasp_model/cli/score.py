"""``vasp score``: the Spark scoring job of one date (``jobs/score.py``); prints its counts as one JSON line."""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("score", log=True)
