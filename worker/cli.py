"""`taiga-backup`: run the worker, enqueue jobs, follow them, list backups.

Job commands enqueue a Celery task by its public name - exactly what a chat-ops bot does - and
print its id; with --wait they follow its progress (a bar on a terminal), print the result (one
JSON object with --json) and exit 0 only on success. Exit statuses are distinct where a script
acts differently on them: a refusal because another job holds the repository (EXIT_BUSY: try
later) is not a failed job, and an id nobody knows (EXIT_UNKNOWN) is not a job still queued.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from worker import lookup
from worker.jobs import requests
from worker.runtime.stamp import node_name
from worker.settings import read

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNKNOWN, EXIT_BUSY = 0, 1, 2, 3, 4, 5
# the refusal of a second job: its class (worker.errors.LeaseBusy), or its documented text (a
# refused backup, which records its refusal as a failed run, ends as a plain JobFailed)
BUSY_ERROR, BUSY_TEXT = "LeaseBusy", "another taiga-backup job is running on this repository"

# command -> (task name, how to build kwargs from the parsed arguments)
JOBS = {
    "backup": (requests.BACKUP, lambda a: {"trigger": "manual"}),
    "restore": (requests.RESTORE, lambda a: {
        k: v for k, v in {"snapshot": a.snapshot, "before": a.before,
                          "safety_backup": False if a.no_safety_backup else None,
                          "dry_run": True if a.dry_run else None}.items() if v is not None}),
    "undo-restore": (requests.UNDO_RESTORE, lambda a: {"restore_id": a.restore_id} if a.restore_id else {}),
    "safety-backup": (requests.SAFETY_BACKUP, lambda a: {"restore_id": a.restore_id,
                                                         **({"give_up": True} if a.give_up else {})}),
    "change-password": (requests.CHANGE_PASSWORD, lambda a: {}),
    "prune": (requests.PRUNE, lambda a: {"dry_run": True} if a.dry_run else {}),
    "check": (requests.CHECK, lambda a: {"read_data_subset": a.read_data_subset} if a.read_data_subset else {}),
    "verify": (requests.VERIFY, lambda a: {}),
    "resume": (requests.RESUME, lambda a: {}),
}


def _app():
    from worker.celery_app import app

    return app


def _settings():
    from worker.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"taiga-backup: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def version() -> str:
    """The installed package's version; from pyproject.toml when run from a source tree."""
    from importlib import metadata

    try:
        return metadata.version("taiga-backup")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.exists() else "unknown"


def _settings_or_none():
    from worker.settings import Settings

    try:
        return Settings.from_env()
    except Exception:
        return None


def describe(task_id: str) -> dict:
    """State of a task in one JSON-able dict: state, progress or result or error (and `busy`
    when the error is the refusal of a second job)."""
    from celery.result import AsyncResult

    res = AsyncResult(task_id, app=_app())
    state = res.state
    out: dict = {"task_id": task_id, "state": state}
    info = res.info
    if state == "SUCCESS":
        out["result"] = info
    elif state == "FAILURE":
        out["error"] = str(info) if info is not None else "failed"
        out["busy"] = type(info).__name__ == BUSY_ERROR or out["error"].startswith(BUSY_TEXT)
        report = lookup.stored_report(_settings_or_none(), task_id)
        if report:
            out["report"] = report
    elif state == "PROGRESS" and isinstance(info, dict):
        out["progress"] = info
    return out


def unknown(task_id: str) -> dict | None:
    """None when the id is a job (worker.lookup's rule); otherwise what to say about it."""
    from celery.result import AsyncResult

    settings = _settings()
    if lookup.known(_app(), settings, task_id, lambda: AsyncResult(task_id, app=_app()).state):
        return None
    return {"task_id": task_id, "state": lookup.UNKNOWN,
            "error": f"no job {task_id}: Celery has no state for it, no report is stored under it and no queue "
                     f"holds it (a mistyped id, another installation's, or older than 30 days)"}


def _bar(progress: dict, width: int = 30) -> str:
    pct = progress.get("percent")
    step = progress.get("step", "")
    msg = progress.get("message") or ""
    if pct is None:
        return f"{step}: {msg}"[:100]
    filled = int(width * pct / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% {step}: {msg}"[:120]


def _say_unknown(info: dict, as_json: bool) -> int:
    print(json.dumps(info, sort_keys=True) if as_json else f"{info['task_id']}: {info['state']}")
    print(f"taiga-backup: {info['error']}", file=sys.stderr)
    return EXIT_UNKNOWN


# how long a wait sleeps when nothing is published: only the checks that no message announces
# (a job gone missing, the --timeout) run on this tick; every state change wakes it at once
WAIT_TICK = 1.0


class _ResultChanges:
    """Wakes the wait when the job's state changes: Celery's Redis backend publishes every result
    and progress update on a channel named after its key, so the CLI sees a change as soon as it
    is stored instead of on its next poll. A backend that cannot (another backend, Redis refusing
    SUBSCRIBE) leaves the wait polling every WAIT_TICK."""

    def __init__(self, task_id: str):
        backend = _app().backend
        self._pubsub = None
        try:
            self._pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(backend.get_key_for_task(task_id))
        except Exception:
            self.close()

    def wait(self, seconds: float) -> None:
        if self._pubsub is None:
            time.sleep(seconds)
            return
        try:
            if self._pubsub.get_message(timeout=seconds) is not None:
                while self._pubsub.get_message(timeout=0) is not None:  # a burst: one describe for all
                    pass
        except Exception:  # Redis went away: poll until the wait ends (describe says why)
            self.close()
            time.sleep(seconds)

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
        self._pubsub = None


def wait(task_id: str, timeout: float | None, as_json: bool) -> int:
    """Follows a job to its end, woken by each stored change (_ResultChanges). A job that stays
    PENDING while no queue, worker or report knows it (lost with a Redis emptied under it, or
    never sent) ends the wait with EXIT_UNKNOWN."""
    changes = _ResultChanges(task_id)  # subscribed before the first read: no change falls between
    try:
        return _follow(task_id, timeout, as_json, changes)
    finally:
        changes.close()


def _follow(task_id: str, timeout: float | None, as_json: bool, changes: _ResultChanges) -> int:
    tty = sys.stderr.isatty() and not as_json
    deadline = None if timeout is None else time.monotonic() + timeout
    last = missing_since = None
    while True:
        info = describe(task_id)
        if info["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        if info["state"] != "PENDING" or lookup.exists(_app(), _settings(), task_id, info["state"]):
            missing_since = None
        elif missing_since is None:
            missing_since = time.monotonic()
        elif time.monotonic() - missing_since >= lookup.UNKNOWN_AFTER:
            if tty:
                print("\r\033[K", end="", file=sys.stderr)
            return _say_unknown(unknown(task_id) or info, as_json)
        line = _bar(info["progress"]) if "progress" in info else info["state"].lower()
        if line != last:
            if tty:
                print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
            elif not as_json:
                print(line, file=sys.stderr, flush=True)
            last = line
        if deadline is not None and time.monotonic() > deadline:
            print(("\n" if tty else "") + f"taiga-backup: still {info['state']} after {timeout:.0f}s "
                  f"(task {task_id} keeps running; see `taiga-backup status {task_id}`)", file=sys.stderr)
            return EXIT_TIMEOUT
        changes.wait(WAIT_TICK if deadline is None else max(0.0, min(WAIT_TICK, deadline - time.monotonic())))
    if tty:
        print("\r\033[K", end="", file=sys.stderr)
    return print_outcome(info, as_json)


def exit_status(info: dict) -> int:
    if info["state"] == "SUCCESS":
        return EXIT_OK
    return EXIT_BUSY if info.get("busy") else EXIT_FAILED


def print_outcome(info: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(info, indent=None, sort_keys=True))
    elif info["state"] == "SUCCESS":
        print(json.dumps(info.get("result"), indent=2, sort_keys=True))
    elif info["state"] == "FAILURE":
        print(f"FAILED: {info.get('error')}", file=sys.stderr)
        if info.get("report"):
            print(json.dumps(info["report"], indent=2, sort_keys=True))
    else:
        print(f"{info['task_id']}: {info['state']}")
    return exit_status(info)


def cmd_job(args) -> int:
    name, build = JOBS[args.command]
    kwargs = build(args)
    result = _app().send_task(name, kwargs=kwargs)
    if not args.wait:
        print(json.dumps({"task_id": result.id, "task": name, "state": "PENDING"}) if args.json else result.id)
        return EXIT_OK
    if not args.json:
        print(f"{name} queued as {result.id}", file=sys.stderr)
    return wait(result.id, args.timeout, args.json)


def cmd_status(args) -> int:
    info = describe(args.task_id)
    if info["state"] == "PENDING":
        missing = unknown(args.task_id)
        if missing:
            return _say_unknown(missing, args.json)
    if args.wait:
        return wait(args.task_id, args.timeout, args.json)
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return EXIT_OK if info["state"] != "FAILURE" else exit_status(info)
    if info["state"] in ("SUCCESS", "FAILURE"):
        return print_outcome(info, False)
    print(f"{info['state']}" + (f"  {_bar(info['progress'])}" if "progress" in info else ""))
    return EXIT_OK


def _listing(items: list[dict], as_json: bool, empty: str, header: str, row) -> int:
    """A list for people (a header and one row(item) a line, or `empty`) or, with --json, for machines."""
    if as_json:
        print(json.dumps(items, sort_keys=True))
    elif not items:
        print(empty)
    else:
        print(header)
        for item in items:
            print(row(item))
    return EXIT_OK


def print_kept(settings, as_json: bool) -> int:
    """The restores' kept previous states: what undo-restore can go back to, and until when."""
    from worker.backups.switch import kept_states

    return _listing(kept_states(settings), as_json, "no kept previous state (undo-restore has nothing to go back to)",
                    f"{'RESTORE ID':<16} {'KEPT SINCE (UTC)':<21} {'EXPIRES (UTC)':<21} DATABASE / FILES",
                    lambda k: f"{k['id']:<16} {k['kept_since']:<21} {_expiry(k):<21} {k['database'] or '-'} / "
                              f"{k['files_dir'] or '-'}")


def _expiry(kept: dict) -> str:
    """When a kept state goes, or why it stays: its safety backup is still owed."""
    owed = kept.get("safety_backup_owed")
    return f"kept: safety {owed['state']}" if owed else kept["expires_at"]


def cmd_snapshots(args) -> int:
    from worker.backups.catalog import list_backups
    from worker.backups.layout import DATABASE, FILES

    if args.kept:
        return print_kept(_settings(), args.json)

    def row(b: dict) -> str:
        snaps = b["snapshots"]
        return (f"{b['backup_id']:<26} {b['time']:<21} {b['kind']:<12} {(snaps[FILES] or '-')[:8]:<10} "
                f"{(snaps[DATABASE] or '-')[:8]:<10} {'yes' if b['complete'] else 'NO'}")

    return _listing([b.as_dict() for b in list_backups(_settings())], args.json, "no backups yet",
                    f"{'BACKUP ID':<26} {'TIME (UTC)':<21} {'KIND':<12} {'FILES':<10} {'DATABASE':<10} COMPLETE", row)


def cmd_jobs(args) -> int:
    """Recent jobs from the stored reports (worker.lookup.recent_jobs), newest first."""
    def row(j: dict) -> str:
        duration = "-" if j["duration_seconds"] is None else f"{j['duration_seconds']:.1f}s"
        return (f"{(j['started_at'] or '-'):<21} {(j['job'] or '-'):<16} {(j['state'] or '-'):<8} {duration:>9}  "
                f"{(j['backup_id'] or '-'):<26} {j['task_id']}")

    return _listing(lookup.recent_jobs(_settings(), args.limit), args.json, "no job reports stored (they are kept "
                    "30 days)", f"{'STARTED (UTC)':<21} {'JOB':<16} {'STATE':<8} {'DURATION':>9}  {'BACKUP ID':<26} "
                    "TASK ID", row)


def cmd_fleet(args) -> int:
    """Every instance on the broker (worker.fleet_view): its worker, last backup, next start,
    running job, last drill and repository size."""
    import redis

    from worker import fleet_view
    from worker.adapters.redis_store import connect

    now = time.time()
    try:
        views = fleet_view.fleet(connect(_settings()), now)
    except redis.RedisError as exc:
        print(f"taiga-backup: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(views, sort_keys=True))
    else:
        print(fleet_view.table(views, now) if views else "no instance has recorded itself on this broker")
    return EXIT_OK


def cmd_init(args) -> int:
    from worker.backups import layout

    settings = _settings()
    out = {}
    for name, repo in layout.both(settings).items():
        out[name] = "created" if repo.init_if_missing() else "exists"
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return EXIT_OK


def cmd_worker(args) -> int:
    _settings()  # fail now, naming the variable, not at the first job
    argv = ["worker", "--loglevel", args.loglevel, "--hostname", node_name(read("TAIGA_INSTANCE"), socket.gethostname())]
    if args.beat:
        argv += ["--beat", "--schedule", args.schedule_file]
    _app().worker_main(argv)
    return EXIT_OK


def cmd_ping(args) -> int:
    """Only the instance's workers count (node_name): on a shared broker another Taiga's worker
    answering says nothing about this one."""
    own = node_name(read("TAIGA_INSTANCE"), "")
    dest = [own + socket.gethostname()] if args.self_only else None
    try:
        replies = _app().control.ping(destination=dest, timeout=args.timeout)
    except Exception as exc:
        print(f"taiga-backup: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    replies = [reply for reply in replies or [] if all(node.startswith(own) for node in reply)]
    if not replies:
        print(f"taiga-backup: no worker of instance {read('TAIGA_INSTANCE')} answered", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(replies) if args.json else f"{len(replies)} worker(s) answered")
    return EXIT_OK


def cmd_alive(args) -> int:
    """The liveness probe: the running worker touches LIVENESS_FILE every few seconds. Asks
    nothing of Redis, so a Redis outage never gets a pod restarted in the middle of a job (the
    readiness probe, `ping --self-only`, does ask the broker)."""
    path = read("LIVENESS_FILE")
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        print(f"taiga-backup: no worker heartbeat at {path}", file=sys.stderr)
        return EXIT_FAILED
    if age > args.max_age:
        print(f"taiga-backup: the worker's last heartbeat is {age:.0f}s old (more than {args.max_age:.0f}s)",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"alive ({age:.0f}s ago)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taiga-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"taiga-backup {version()}")
    parser.add_argument("--instance", default=None,
                        help="the Taiga to speak for, when several share the broker: its queue and its Redis keys "
                             "(default: TAIGA_INSTANCE, else this pod's namespace)")
    sub = parser.add_subparsers(dest="command", required=True)

    def job(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--wait", action="store_true", help="follow the job and exit non-zero if it fails")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N seconds")
        p.set_defaults(func=cmd_job)
        return p

    job("backup", "back up the database and media now")
    r = job("restore", "restore a backup (loaded beside the live data, switched in by renames; the previous "
                       "state is kept for undo-restore)")
    r.add_argument("--snapshot", default=None, help="latest (default), a backup id, or a restic snapshot id")
    r.add_argument("--before", default=None, help="the newest backup at or before this ISO time")
    r.add_argument("--no-safety-backup", action="store_true", help="skip the pre-restore backup of the current state")
    r.add_argument("--dry-run", action="store_true", help="say which backup, its sizes and what would be kept; "
                                                          "change nothing")
    u = job("undo-restore", "switch back to the state the last restore replaced, while it is kept")
    u.add_argument("--restore-id", default=None, help="a kept state's id (snapshots --kept); default: the newest")
    sb = job("safety-backup", "back up the state a restore replaced again, after its safety backup failed")
    sb.add_argument("restore_id", help="the kept state owing its safety backup (snapshots --kept)")
    sb.add_argument("--give-up", action="store_true", help="make none: the kept state then expires after "
                                                           "RESTORE_KEEP_PREVIOUS like any other")
    job("change-password", "move both repositories to RESTIC_NEW_PASSWORD_FILE")
    p = job("prune", "apply the retention policy to both repositories")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    c = job("check", "check both repositories (structure and a rotating subset of data)")
    c.add_argument("--read-data-subset", default=None, help="n/t, x%% or a size, as restic takes it")
    job("verify", "restore drill: restore the latest backup to a scratch database and directory, compare")
    job("resume", "scale back every deployment a job left quiesced")

    s = sub.add_parser("status", help="state, progress or result of a job (an unknown id is an error)")
    s.add_argument("task_id")
    s.add_argument("--json", action="store_true")
    s.add_argument("--wait", action="store_true", help="follow the job and exit non-zero if it fails")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N seconds")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("jobs", help="recent jobs from their stored reports, newest first")
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=int, default=20, help="at most this many (0: all kept, 30 days)")
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("fleet", help="every instance sharing the broker: worker, last backup, next start, running "
                                     "job, last drill, repository size")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_fleet)

    s = sub.add_parser("snapshots", help="list backups (pairs of files + database snapshots)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--kept", action="store_true", help="list the restores' kept previous states instead")
    s.set_defaults(func=cmd_snapshots)

    s = sub.add_parser("init", help="create both repositories if they do not exist")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_init)

    w = sub.add_parser("worker", help="run the Celery worker (with --beat: and the schedule)")
    w.add_argument("--beat", action="store_true", help="embed Celery beat (only one replica may do this)")
    w.add_argument("--loglevel", default=read("LOG_LEVEL"))
    w.add_argument("--schedule-file", default=read("BEAT_SCHEDULE_FILE"))
    w.set_defaults(func=cmd_worker)

    a = sub.add_parser("alive", help="exit 0 when this host's worker process is running (liveness; no Redis)")
    a.add_argument("--max-age", type=float, default=60.0, help="seconds since the worker's last heartbeat")
    a.set_defaults(func=cmd_alive)

    p = sub.add_parser("ping", help="exit 0 when a worker of this instance answers (health checks)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--self-only", action="store_true", help="only this host's worker")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ping)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.instance is not None:
        # everything this process reads and sends is that instance's: the app's default queue,
        # the settings' key namespace, the stamp (all from TAIGA_INSTANCE)
        os.environ["TAIGA_INSTANCE"] = args.instance
        try:
            read("TAIGA_INSTANCE")
        except Exception as exc:
            print(f"taiga-backup: --instance: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
