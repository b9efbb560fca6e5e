"""One nightly DAG run in a fresh process: Airflow's configuration and metadata DB are per process, so a
test module whose nights use a warehouse of its own (other Asset URIs under the same Asset names) runs
them apart from the DAG tests that share this process's Airflow DB.

Import it in a test module: ``from night_process import run_night_in_own_process``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"


_NIGHT_SCRIPT = """
import json, os, sys
from vasp_model.cli.run import embedded_environment, run_dag
os.environ.update(embedded_environment(os.environ["VASP_HOME"]))
date, conf = json.loads(sys.argv[1])
print("RESULT " + json.dumps(run_dag(date, conf), default=str))
"""


def inherited_environment(*dropped: str) -> dict[str, str]:
    """This process's environment for a night in a process of its own: without the Airflow and MLflow
    settings an earlier test of this process may have left (nor variables starting with ``dropped``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", *dropped))}


def run_night_in_own_process(date: str, conf: dict, env: dict[str, str]) -> dict:
    """``run_dag(date, conf)`` in a fresh process whose Airflow home is ``$VASP_HOME/airflow`` (``env``
    must set ``VASP_HOME``). Airflow's configuration and metadata DB are per process: a module whose nights
    use their own warehouse (other Asset URIs under the same names) must not share this process's DB."""
    child = inherited_environment()
    child.update(env)
    child["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    proc = subprocess.run(
        [sys.executable, "-c", _NIGHT_SCRIPT, json.dumps([date, conf])],
        env=child,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])
