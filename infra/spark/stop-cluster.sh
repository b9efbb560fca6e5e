#!/usr/bin/env bash
# Stop the cluster started by start-cluster.sh: each worker JVM by its PID, then the master.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" infra/localstack.py stop spark "$@"
