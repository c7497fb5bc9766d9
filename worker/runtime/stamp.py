"""The stamp every message our processes publish carries inside its signed kwargs: the task it is
for, its id, a one-time nonce and an expiry (worker.runtime.security says why, and checks it).

A module of its own, importing nothing of the product, so a chat-ops client stamps exactly as the
worker does without loading the worker (worker/chatops_client.py).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

STAMP = "_request"


def stamp(body, headers: dict, ttl: float) -> None:
    """Adds the stamp to a message about to be published (before_task_publish). A re-published
    message (a retry) gets a fresh one. The lifetime starts at the message's eta when it has one:
    a scheduled job that found the repository busy comes back after up to 5 minutes
    (worker.jobs.job.busy_countdown), and must still be valid then however short the TTL."""
    kwargs = body[1] if isinstance(body, (tuple, list)) and len(body) > 1 else None
    if isinstance(kwargs, dict) and headers and headers.get("task"):
        start = max(time.time(), _eta(headers.get("eta")))
        kwargs[STAMP] = {"task": headers["task"], "id": headers.get("id"), "nonce": uuid.uuid4().hex,
                         "expires": round(start + ttl, 3)}


def _eta(value) -> float:
    """Celery's `eta` header (ISO 8601, UTC: the app runs with enable_utc) as Unix time; 0 without."""
    if not isinstance(value, str):
        return 0.0
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
