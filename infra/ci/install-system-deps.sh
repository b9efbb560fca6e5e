#!/usr/bin/env bash
# System packages the service tests need beyond Python: PostgreSQL (Debian's package) and Java 17.
# Idempotent: installs only what is missing; a no-op on a machine that has them. Needs root (or sudo).
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: nothing to do (postgresql and java present)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-system-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
# The package's post-install tries to start the distro's cluster; policy-rc.d may refuse (fine: tests
# run their own throwaway cluster on a free port and never use the system one).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
