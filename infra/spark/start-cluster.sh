#!/usr/bin/env bash
# Start a Spark standalone cluster from the installed pyspark: master on spark://127.0.0.1:7077 + 2 workers
# (1 core, 1g each). PID files and logs under $VASP_HOME/localstack/spark (default ./run/localstack/spark).
# Extra arguments go to infra/localstack.py (e.g. --workers 3 --worker-memory 2g --spark-port 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
export PATH="$(dirname "$PY"):$PATH"
exec "$PY" infra/localstack.py start spark "$@"
