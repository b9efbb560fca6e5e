"""`vasp run`'s embedded environment: framework bookkeeping loggers quiet unless debugging."""

from __future__ import annotations

from vasp_model.cli.run import QUIET_LOGGERS, embedded_environment


def test_an_interactive_run_quiets_the_frameworks_bookkeeping_loggers(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_LOG_LEVEL", raising=False)
    monkeypatch.delenv("AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS", raising=False)
    env = embedded_environment(str(tmp_path))
    assert env["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"] == "vasp_model.cli.airflow_logging.LOGGING_CONFIG"
    assert env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"].split() == [f"{name}=warning" for name in QUIET_LOGGERS]
    assert env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"

    from vasp_model.cli.airflow_logging import LOGGING_CONFIG

    assert all(LOGGING_CONFIG["loggers"][name]["level"] == "WARNING" for name in QUIET_LOGGERS)
    assert LOGGING_CONFIG["root"]["level"] == "INFO"  # the pipeline's own logs stay


def test_debug_runs_and_an_operators_own_logging_config_keep_theirs(tmp_path, monkeypatch):
    monkeypatch.setenv("VASP_LOG_LEVEL", "DEBUG")
    assert "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS" not in embedded_environment(str(tmp_path))
    monkeypatch.delenv("VASP_LOG_LEVEL")
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS", "my_settings.LOGGING")
    assert embedded_environment(str(tmp_path))["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"] == "my_settings.LOGGING"
