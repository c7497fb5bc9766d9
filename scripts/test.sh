#!/usr/bin/env bash
# The whole test suite on real parts (throwaway redis-server, PostgreSQL, restic repositories,
# worker processes, a Kubernetes API double). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the layers of docs/development.md: an upward import fails here, before any test runs
.venv/bin/lint-imports --no-cache
# Three test processes by default (TEST_WORKERS=0 runs them in this one): most tests wait on real
# servers, pods starting and restic, so on 2 cores three at a time take about a third of the time.
# Each process starts its own redis-server, PostgreSQL and Kubernetes API double; a file's tests
# stay together (module fixtures such as the test PKI are made once).
exec .venv/bin/pytest -n "${TEST_WORKERS:-3}" --dist loadfile "$@"
