#!/usr/bin/env bash
# The whole test suite on real parts (throwaway redis-server, PostgreSQL, restic repositories,
# worker processes, a Kubernetes API double). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the layers of docs/development.md: an upward import fails here, before any test runs
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
