"""Airflow's logging configuration for ``vasp run``: Airflow's default, with the frameworks'
bookkeeping loggers (the metadata DB migration, DAG parsing, the task API's state updates) at
WARNING, so that an interactive run's console is about the pipeline. ``vasp run`` selects it through
Airflow's own ``[logging] logging_config_class`` (structlog loggers: ``namespace_levels``).
"""

from __future__ import annotations

import copy

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

from vasp_model.cli.run import QUIET_LOGGERS

LOGGING_CONFIG = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
LOGGING_CONFIG["loggers"].update({name: {"level": "WARNING"} for name in QUIET_LOGGERS})
