"""The benchmark (bench/README.md): bench.run is the script, the other modules its rooms."""

from __future__ import annotations

import sys
import time

MB = 1_000_000  # the tables' and logs' megabyte (decimal)


def log(msg: str) -> None:
    """One progress line on stderr: stdout carries only the markdown table, so it can be piped."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
