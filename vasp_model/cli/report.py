"""``vasp report``: the morning report of one night (``runs/dt=D/report.html``) and its drift flags, printed
as one JSON line (``vasp_model/pipeline/report.py``)."""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("report")
