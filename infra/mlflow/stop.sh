#!/usr/bin/env bash
# Stop the mlflow server started by infra/mlflow/start.sh, by its PID (and its uvicorn worker).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" infra/localstack.py stop mlflow "$@"
