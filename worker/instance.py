"""Who this worker process is: its host name and an id made when the process started.

A deployment quiesced by a job carries both (worker.adapters.kube). After a Redis restart has
wiped the job lease, the reconciler asks the live workers who they are (a control command of
worker.runtime.signals) and resumes the app only when the process that quiesced it is gone:
a restarted container keeps its host name but not its id.
"""

from __future__ import annotations

import socket
import uuid

ID = uuid.uuid4().hex


def holder() -> str:
    """`host/id`, as written on a quiesced deployment."""
    return f"{socket.gethostname()}/{ID}"
