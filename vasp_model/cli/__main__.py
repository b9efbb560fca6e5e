"""``python -m vasp_model.cli``: the ``vasp`` command."""

import sys

from vasp_model.cli import main

sys.exit(main())
