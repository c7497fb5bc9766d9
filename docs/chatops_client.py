#!/usr/bin/env python3
"""A minimal chat-ops client for taiga-backup: it knows only the broker URL and the public task
names, uses nothing but `celery`, and prints the job's JSON result.

    pip install "celery[redis]>=5.7,<5.8"
    python chatops_client.py --broker redis://:PASSWORD@redis:6379/0 backup
    python chatops_client.py --broker redis://... restore --snapshot latest
    python chatops_client.py --broker redis://... restore --before 2024-01-31T12:00:00Z

Progress goes to stderr as one JSON object per change of state or step; the final outcome goes
to stdout as one JSON object. Exit status: 0 SUCCESS, 1 FAILURE, 3 still running at --timeout.
The password in the broker URL may instead come from CELERY_BROKER_URL in the environment.
"""

import argparse
import json
import os
import sys
import time

from celery import Celery


def connect(broker: str, backend: str | None) -> Celery:
    app = Celery("taiga-chatops", broker=broker, backend=backend or broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"])
    return app


def follow(app: Celery, task_id: str, timeout: float) -> int:
    """Polls the result backend: PENDING -> STARTED -> PROGRESS (step, percent) -> SUCCESS/FAILURE."""
    result = app.AsyncResult(task_id)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        state, info = result.state, result.info
        seen = (state, info.get("step"), info.get("percent")) if isinstance(info, dict) else (state,)
        if seen != last:
            line = {"task_id": task_id, "state": state}
            if state == "PROGRESS" and isinstance(info, dict):
                line.update(step=info.get("step"), percent=info.get("percent"), message=info.get("message"))
            print(json.dumps(line), file=sys.stderr, flush=True)
            last = seen
        if state == "SUCCESS":
            print(json.dumps(info, sort_keys=True))   # the job's report: see README, "Restore"
            return 0
        if state in ("FAILURE", "REVOKED"):
            # Celery rebuilds the error as an exception; its text is the job's first error
            print(json.dumps({"task_id": task_id, "state": state, "error": str(info)}))
            return 1
        if time.monotonic() > deadline:
            print(json.dumps({"task_id": task_id, "state": state, "error": "still running, stopped waiting"}))
            return 3
        time.sleep(0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
    parser.add_argument("--backend", default=os.environ.get("CELERY_RESULT_BACKEND"))
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("backup")
    restore = sub.add_parser("restore")
    restore.add_argument("--snapshot", help="latest, a backup id, or a restic snapshot id")
    restore.add_argument("--before", help="the newest backup at or before this ISO-8601 time")
    restore.add_argument("--no-safety-backup", action="store_true")
    args = parser.parse_args(argv)

    if args.job == "backup":
        name, kwargs = "taiga_backup.backup", {"trigger": "chat"}
    else:
        name, kwargs = "taiga_backup.restore", {"trigger": "chat"}
        if args.snapshot is not None:
            kwargs["snapshot"] = args.snapshot
        if args.before is not None:
            kwargs["before"] = args.before
        if args.no_safety_backup:
            kwargs["safety_backup"] = False
    app = connect(args.broker, args.backend)
    task = app.send_task(name, kwargs=kwargs)
    return follow(app, task.id, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
