#!/usr/bin/env python3
"""Moved: the chat-ops client is the `taiga-backup-chatops` console script (worker/chatops_client.py,
installed with the package). This file stays so `python docs/chatops_client.py` keeps working
from a checkout or where taiga-backup is installed."""

import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # a checkout: the package beside docs/

from worker.chatops_client import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
