"""``vasp synth``: write a synthetic interaction file (``jobs/synth.py``); prints its summary as one JSON line."""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("synth")
