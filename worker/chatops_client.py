"""`taiga-backup-chatops`: a minimal chat-ops client for taiga-backup. It knows only the broker,
the public task names (docs/chatops.md, the contract it speaks: CONTRACT_VERSION) and the request
stamp, and prints the job's JSON result.

Why it lives in the package: a bot in another namespace installs `taiga-backup` (or its image)
and runs this console script; nothing to copy out of docs/. It imports only celery and the
signing stamp (worker.runtime.stamp.stamp, so the worker and its clients stamp alike) -
never the jobs, the tasks or the worker's Celery app (tests/worker/test_chatops_bot.py checks).

    pip install taiga-backup        # or run it in the taiga-backup image
    export CELERY_BROKER_URL_FILE=/run/secrets/broker-url       # redis://:PASSWORD@redis:6379/0
    export CELERY_SECURITY_KEY_FILE=/run/secrets/bot.key        # when the worker runs signed
    export CELERY_SECURITY_CERT_FILE=/run/secrets/bot.crt       #   messages only (docs/security.md)
    export CELERY_SECURITY_CERT_STORE=/run/secrets/trusted/     # certificates of the workers
    export TAIGA_INSTANCE=taiga                                 # the Taiga to ask (or --instance)
    taiga-backup-chatops instances                # {"taiga": ["taiga-backup-taiga@pod"], ...}
    taiga-backup-chatops backup
    taiga-backup-chatops restore --snapshot latest --dry-run
    taiga-backup-chatops --instance taiga-b restore --before 2024-01-31T12:00:00Z

The broker URL carries a password, so it is read from a file (CELERY_BROKER_URL_FILE or
--broker-file), never from the command line. Every request carries the stamp the worker checks
when signing is on (`_request` in the signed kwargs: the task it is for, its id, a one-time nonce,
an expiry and the instance), so a captured message can neither be relabelled as another task,
nor replayed, nor pushed onto another Taiga's queue. Requests go to the instance's queue,
`taiga-backup.<instance>`.

Progress goes to stderr as one JSON object per change of state or step; the final outcome goes
to stdout as one JSON object. Exit status: 0 SUCCESS, 1 FAILURE, 2 bad setup, 3 still running at
--timeout.
"""

import argparse
import json
import os
import re
import sys

from celery import Celery, signals
from celery.exceptions import TimeoutError

from worker.runtime.stamp import instance_of, instance_of_node, queue, stamp as add_stamp

STAMP_TTL = 600.0  # a request not run within ten minutes is refused (at most the worker's SIGNED_REQUEST_TTL)
CONTRACT_VERSION = 3  # docs/chatops.md "Contract version": the task names, kwargs, queue and results spoken here
_INSTANCE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def connect(broker: str, backend: str | None, signing: dict | None) -> Celery:
    app = Celery("taiga-chatops", broker=broker, backend=backend or broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"])
    if signing:
        app.conf.update(task_serializer="auth", accept_content=["auth"], security_key=signing["key"],
                        security_certificate=signing["cert"], security_cert_store=signing["store"],
                        security_digest="sha256")
        app.setup_security(allowed_serializers=["json"])  # results stay JSON
    return app


@signals.before_task_publish.connect
def stamp(body=None, headers=None, routing_key=None, **_):
    """The stamp goes into the kwargs, which the signature covers (headers are not signed), and
    names the instance whose queue the request goes to."""
    add_stamp(body, headers, STAMP_TTL, instance_of(routing_key))


_ORDER = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "PROGRESS": 3, "SUCCESS": 4, "FAILURE": 4, "REVOKED": 4}


def follow(app: Celery, task_id: str, timeout: float) -> int:
    """Follows the job with nothing but Celery: `AsyncResult.get(on_message=...)` waits on the
    Redis result backend's publish of each change (PENDING -> STARTED -> PROGRESS (step, percent)
    -> SUCCESS/FAILURE), so each step is printed when the worker stores it, not on a poll."""
    result = app.AsyncResult(task_id)
    last, reached = None, 0

    def show(meta: dict) -> None:
        nonlocal last, reached
        state, info = meta.get("status"), meta.get("result")
        seen = (state, info.get("step"), info.get("percent")) if isinstance(info, dict) else (state,)
        rank = _ORDER.get(state, 0)
        if rank < reached:  # an older change delivered after a newer one was read: nothing new
            return
        reached = rank
        if seen != last:
            line = {"task_id": task_id, "state": state}
            if state == "PROGRESS" and isinstance(info, dict):
                line.update(step=info.get("step"), percent=info.get("percent"), message=info.get("message"))
            print(json.dumps(line), file=sys.stderr, flush=True)
            last = seen

    show({"status": result.state, "result": result.info})  # where it stands now (get() reports changes)
    try:
        info = result.get(timeout=timeout, propagate=False, on_message=show)
    except TimeoutError:
        print(json.dumps({"task_id": task_id, "state": result.state, "error": "still running, stopped waiting"}))
        return 3
    if result.state == "SUCCESS":
        print(json.dumps(info, sort_keys=True))   # the job's report: docs/chatops.md
        return 0
    # Celery rebuilds the error as an exception; its text is the job's first error
    print(json.dumps({"task_id": task_id, "state": result.state, "error": str(info)}))
    return 1


def list_instances(app: Celery, timeout: float = 2.0) -> int:
    """The Taigas whose workers answer on this broker, from their node names (node_name):
    one JSON object, instance -> its worker nodes. What a bot offers before it asks one."""
    found: dict[str, list[str]] = {}
    for reply in app.control.ping(timeout=timeout) or []:
        for node in reply:
            name = instance_of_node(node)
            if name:
                found.setdefault(name, []).append(node)
    print(json.dumps({name: sorted(nodes) for name, nodes in found.items()}, sort_keys=True))
    return 0


def main(argv=None) -> int:
    # allow_abbrev=False: `--broker URL` (a password on the command line) is refused by name
    # instead of being taken for --broker-file
    parser = argparse.ArgumentParser(prog="taiga-backup-chatops", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s, chat-ops contract {CONTRACT_VERSION}")
    parser.add_argument("--broker-file", default=os.environ.get("CELERY_BROKER_URL_FILE"),
                        help="file holding the broker URL (default: $CELERY_BROKER_URL_FILE)")
    parser.add_argument("--instance", default=os.environ.get("TAIGA_INSTANCE"),
                        help="the Taiga to ask (its worker's TAIGA_INSTANCE, by default its namespace; "
                             "default: $TAIGA_INSTANCE)")
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("instances", help="the Taigas whose workers answer on this broker (JSON)")
    sub.add_parser("backup")
    restore = sub.add_parser("restore")
    restore.add_argument("--snapshot", help="latest, a backup id, or a restic snapshot id")
    restore.add_argument("--before", help="the newest backup at or before this ISO-8601 time")
    restore.add_argument("--no-safety-backup", action="store_true")
    restore.add_argument("--dry-run", action="store_true", help="answer with the plan, touch nothing")
    followed = sub.add_parser("follow", help="follow a job already sent (e.g. the safety backup a restore's "
                                             "answer names) to its end")
    followed.add_argument("task_id")
    args = parser.parse_args(argv)

    if args.job != "instances" and (not args.instance or not _INSTANCE.match(args.instance)):
        print("chatops_client: name the Taiga with --instance (or TAIGA_INSTANCE): its worker's instance, "
              "a DNS label such as its namespace", file=sys.stderr)
        return 2
    if not args.broker_file:
        print("chatops_client: set CELERY_BROKER_URL_FILE (or --broker-file) to a file holding the broker URL",
              file=sys.stderr)
        return 2
    broker = read_file(args.broker_file)
    backend_file = os.environ.get("CELERY_RESULT_BACKEND_FILE")
    backend = read_file(backend_file) if backend_file else None
    names = ("CELERY_SECURITY_KEY_FILE", "CELERY_SECURITY_CERT_FILE", "CELERY_SECURITY_CERT_STORE")
    paths = [os.environ.get(name) for name in names]
    if any(paths) and not all(paths):
        print("chatops_client: signing needs all of " + ", ".join(names), file=sys.stderr)
        return 2
    signing = dict(zip(("key", "cert", "store"), paths)) if all(paths) else None
    if signing and os.path.isdir(signing["store"]):
        signing["store"] = os.path.join(signing["store"], "*")  # Celery takes a glob

    if args.job == "instances":
        return list_instances(connect(broker, backend, signing))
    if args.job == "follow":
        return follow(connect(broker, backend, signing), args.task_id, args.timeout)
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
        if args.dry_run:
            kwargs["dry_run"] = True
    app = connect(broker, backend, signing)
    task = app.send_task(name, kwargs=kwargs, queue=queue(args.instance))
    return follow(app, task.id, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
