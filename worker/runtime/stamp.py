"""The stamp every message our processes publish carries inside its signed kwargs: the task it is
for, its id, a one-time nonce, an expiry and the instance it is for (worker.runtime.security says
why, and checks it); and the names of an instance's queue and worker nodes.

A module of its own, importing nothing of the product, so a chat-ops client stamps exactly as the
worker does without loading the worker (worker/chatops_client.py).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

STAMP = "_request"
QUEUE_PREFIX = "taiga-backup."
NODE_PREFIX = "taiga-backup-"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # an instance: a DNS label (worker.settings)


def queue(instance: str) -> str:
    """The queue the worker of one instance reads (TAIGA_INSTANCE): where requests for it go."""
    return QUEUE_PREFIX + instance


def node_name(instance: str, host: str) -> str:
    """The Celery node name of the instance's worker on `host`: the instance in it, so Flower on a
    shared broker shows whose worker each is, and a ping counts only the instance's own workers
    (two instances' workers on one host no longer share a name). Not QUEUE_PREFIX: the per-process
    queues are named after the node (worker.celery_app) and must not read as an instance's."""
    return f"{NODE_PREFIX}{instance}@{host}"


def instance_of_node(name) -> str | None:
    """The instance of a worker node named by node_name; None for any other node."""
    if isinstance(name, str) and name.startswith(NODE_PREFIX) and "@" in name:
        label = name[len(NODE_PREFIX):name.index("@")]
        return label if _LABEL.fullmatch(label) else None
    return None


def instance_of(routing_key) -> str | None:
    """The instance a message routed to an instance's queue is for; None for any other queue."""
    if isinstance(routing_key, str) and routing_key.startswith(QUEUE_PREFIX):
        name = routing_key[len(QUEUE_PREFIX):]
        return name if _LABEL.fullmatch(name) else None
    return None


def stamp(body, headers: dict, ttl: float, instance: str | None = None) -> None:
    """Adds the stamp to a message about to be published (before_task_publish): with `instance`,
    the Taiga it is for, inside the signed part, so a message pushed onto another instance's
    queue is refused there. A re-published
    message (a retry) gets a fresh one. The lifetime starts at the message's eta when it has one:
    a scheduled job that found the repository busy comes back after up to 5 minutes
    (worker.jobs.job.busy_countdown), and must still be valid then however short the TTL."""
    kwargs = body[1] if isinstance(body, (tuple, list)) and len(body) > 1 else None
    if isinstance(kwargs, dict) and headers and headers.get("task"):
        start = max(time.time(), _eta(headers.get("eta")))
        kwargs[STAMP] = {"task": headers["task"], "id": headers.get("id"), "nonce": uuid.uuid4().hex,
                         "expires": round(start + ttl, 3)}
        if instance:
            kwargs[STAMP]["instance"] = instance


def _eta(value) -> float:
    """Celery's `eta` header (ISO 8601, UTC: the app runs with enable_utc) as Unix time; 0 without."""
    if not isinstance(value, str):
        return 0.0
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
