"""Test-only pause points: a crash test stops a job at a named moment, its children alive.

Why in the product: a SIGKILL "at the worst moment" must strike at a moment the test can name
(the side database half loaded, the media half-switched). With TAIGA_BACKUP_TEST_PAUSE=<name>
the job stops at `pause_point(<name>)` until the process is killed, and says so on stdout; the
variable is never set in production, where a pause point costs one environment lookup.
"""

from __future__ import annotations

import os
import time

TEST_PAUSE = "TAIGA_BACKUP_TEST_PAUSE"


def pause_point(name: str) -> None:
    """Stops here forever when TAIGA_BACKUP_TEST_PAUSE names this point."""
    if os.environ.get(TEST_PAUSE) == name:
        print(f"taiga-backup test pause: {name} (pid {os.getpid()})", flush=True)
        while True:
            time.sleep(1)
