#!/usr/bin/env bash
# Sets everything up and runs the main job end to end on throwaway local servers:
# backup -> change the data -> restore -> prove the data is back byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
