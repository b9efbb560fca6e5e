"""``vasp tune``: choose the training config of ``features/dt=D`` on validation users within a budget
(``vasp_model.pipeline.tuning``); prints the study's summary as one JSON line."""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("tune")
