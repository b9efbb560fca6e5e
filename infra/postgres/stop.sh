#!/usr/bin/env bash
# Fast-shutdown the throwaway PostgreSQL by its PID and delete its data directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" infra/localstack.py stop postgres "$@"
