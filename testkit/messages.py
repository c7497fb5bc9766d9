"""Task messages as anyone with broker access can take and write them: sent by a real client to
a queue no worker reads, read back raw, and pushed onto a worker's queue as they are or
relabelled (the security and the many-instances tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import redis

from testkit.site import ROOT

CAPTURED = "captured"  # a queue no worker reads


def capture(env: dict, task: str, kwargs: dict) -> dict:
    """The message a client with `env` (its broker, its signing key, its TAIGA_INSTANCE) sends."""
    code = ("import json, sys; from worker.celery_app import app; "
            f"app.send_task(sys.argv[1], kwargs=json.loads(sys.argv[2]), queue={CAPTURED!r})")
    subprocess.run([sys.executable, "-c", code, task, json.dumps(kwargs)], env={**os.environ, **env,
                   "PYTHONPATH": str(ROOT)}, cwd=str(ROOT), check=True, capture_output=True, timeout=60)
    raw = redis.Redis.from_url(env["CELERY_BROKER_URL"]).rpop(CAPTURED)
    assert raw, "nothing was captured"
    return json.loads(raw)


def push(broker_url: str, message: dict, queue: str, task: str | None = None) -> str:
    """Puts a captured message onto `queue`, as it is or relabelled as `task`; returns its id."""
    message = json.loads(json.dumps(message))
    if task:
        message["headers"]["task"] = task
    message["properties"]["delivery_info"] = {"exchange": "", "routing_key": queue}
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    redis.Redis.from_url(broker_url).lpush(queue, json.dumps(message))
    return message["headers"]["id"]
