#!/usr/bin/env bash
# The whole test suite on real parts (throwaway redis-server, PostgreSQL, restic repositories,
# worker processes, a Kubernetes API double). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest "$@"
