"""``vasp promote``: gate the date's registered version into alias ``champion`` (or roll it back).

Prints one JSON line with the decision. A rejected candidate is not an error (exit 0): the
champion stays and the reason is recorded on the version (tag ``gate.reason``) and logged.
"""

from __future__ import annotations

from vasp_model.cli.stage import stage_command

HELP, add_arguments, run = stage_command("promote", show=lambda decision: decision.to_json(), log=True)
