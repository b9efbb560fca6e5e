#!/usr/bin/env bash
# `mlflow server` on http://127.0.0.1:5000 backed by the local PostgreSQL (start infra/postgres/start.sh
# first, or pass --backend-store-uri URI) with artifacts proxied to $VASP_HOME/localstack/mlflow/artifacts.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
export PATH="$(dirname "$PY"):$PATH"
exec "$PY" infra/localstack.py start mlflow "$@"
