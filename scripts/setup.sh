#!/usr/bin/env bash
# Installs what taiga-backup needs on a Debian/Ubuntu machine (system tools + a Python venv from
# the lock file). Idempotent: a second run only checks. Used by the demo, the tests and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v restic >/dev/null || need+=(restic)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_dump >/dev/null || need+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.lock-$(sha256sum requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies from requirements-dev.lock" >&2
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  rm -f .venv/.lock-*; touch "$stamp"
fi
