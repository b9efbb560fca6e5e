#!/usr/bin/env bash
# Throwaway PostgreSQL on 127.0.0.1 (free port) with role `vasp` and databases `mlflow`, `airflow`.
# As root it runs as the `postgres` user. PID/log/state under $VASP_HOME/localstack/postgres.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" infra/localstack.py start postgres "$@"
