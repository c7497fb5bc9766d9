"""Upkeep tasks (public names, the chat-ops contract): `taiga_backup.change_password`,
`taiga_backup.prune`, `taiga_backup.check`, `taiga_backup.verify`.

Each runs under the one-job-per-repository lease like a backup. When beat triggers one while
another job holds the lease (a long backup overrunning into the prune slot), it is retried later
instead of failing; a manual request fails at once, naming the job in the way. Also here: the
worker heartbeat that tells a dead worker's restic locks from a live holder's (worker.restic_locks).
"""

from __future__ import annotations

import logging
import re
import socket

from celery import signals

from worker import drill, redact, repositories, restic_locks, retention, rotation
from worker.celery_app import app
from worker.redis_client import connect as redis_connect

from .job import Job, LeaseBusy, RequestInvalid, load_settings, run_job

log = logging.getLogger("taiga_backup.upkeep")
TRIGGERS = ("manual", "schedule", "chat")
CHECK_PART_KEY = "taiga-backup:check:last-part"
MAX_FINDINGS = 40
BUSY_RETRIES = 80  # with the back-off: about six hours, as long as a beat message lives
_SUBSET = re.compile(r"(\d{1,4})/(\d{1,4})|(\d{1,3}(?:\.\d{1,2})?)%|\d{1,6}[kKmMgGtT]")


class RepositoryDamaged(RuntimeError):
    """restic check found errors; the message carries its findings."""


# -- request validation -----------------------------------------------------------------------
def _trigger(value):
    if not isinstance(value, str) or value not in TRIGGERS:
        raise RequestInvalid(f"trigger must be one of {', '.join(TRIGGERS)}")
    return value


def _dry_run(value):
    if not isinstance(value, bool):
        raise RequestInvalid("dry_run must be true or false")
    return value


def _read_data_subset(value):
    """n/t (1 <= n <= t), x% (0 < x <= 100) or a size (e.g. 500M), as restic check takes it."""
    match = _SUBSET.fullmatch(value) if isinstance(value, str) else None
    if match and match.group(1):
        ok = 1 <= int(match.group(1)) <= int(match.group(2))
    elif match and match.group(3):
        ok = 0 < float(match.group(3)) <= 100
    else:
        ok = bool(match) and int(value.rstrip("kKmMgGtT")) > 0
    if not ok:
        raise RequestInvalid("read_data_subset must be n/t, a percentage like 5% or a size like 500M")
    return value


def validate(task_name: str, kwargs: dict, fields: dict) -> dict:
    """Only the named kwargs, each checked; `trigger` is always allowed (beat sends "schedule")."""
    fields = {"trigger": _trigger, **fields}
    unknown = set(kwargs) - set(fields)
    if unknown:
        raise RequestInvalid(f"unknown argument(s) for {task_name}: {', '.join(sorted(map(str, unknown)))}")
    args = {name: check(kwargs[name]) for name, check in fields.items() if name in kwargs}
    args.setdefault("trigger", "manual")
    return args


# -- running ----------------------------------------------------------------------------------
def _run(task, kind: str, kwargs: dict, fields: dict, body) -> dict:
    """Validates, then runs `body(job, **args)` as a job. A scheduled job that finds the lease
    taken comes back later (5 s doubling to 5 min) rather than failing."""
    args = validate(f"taiga_backup.{kind}", kwargs, fields)
    trigger = args.pop("trigger")

    def with_trigger(job: Job) -> dict:
        job.report["trigger"] = trigger
        return body(job, **args)

    try:
        return run_job(task, kind, with_trigger)
    except LeaseBusy as exc:
        if trigger != "schedule" or task is None:
            raise
        retries = task.request.retries or 0
        log.info("%s: %s; trying again later", task.name, exc)
        raise task.retry(countdown=min(300, 5 * 2 ** retries), max_retries=BUSY_RETRIES)


# -- check ------------------------------------------------------------------------------------
def check_repositories(job: Job, read_data_subset: str | None = None) -> dict:
    """Structure check plus a slice of the data: the given subset, or part n of CHECK_SUBSET_PARTS,
    n moving on after each clean run so every pack is read once per CHECK_SUBSET_PARTS runs."""
    settings = job.settings
    client = redis_connect(settings)
    rotating = read_data_subset is None
    if rotating:
        parts = settings.check_subset_parts
        part = int(client.get(CHECK_PART_KEY) or 0) % parts + 1
        read_data_subset = f"{part}/{parts}"
    result: dict = {"read_data_subset": read_data_subset, "repositories": {}}
    for name, repo in repositories.both(settings).items():
        try:
            with job.step(f"check_{name}") as entry:
                entry.update(restic_locks.make_way(settings, repo, client, exclusive=True,
                                                   on_wait=lambda msg, n=name: job.progress(f"check_{n}", None, msg)))
                done = repo.check(read_data_subset, timeout=settings.restore_timeout)
                findings = [redact.redact(line) for line in done.stderr.splitlines() if line.strip()]
                result["repositories"][name] = {"ok": done.returncode == 0, "findings": findings[:MAX_FINDINGS]}
                if done.returncode:
                    raise RepositoryDamaged(f"repository {name} is damaged: " + " | ".join(findings[:5]))
        except Exception:
            continue  # recorded on the job by its step; the other repository is still checked
    if rotating and not job.errors:
        client.set(CHECK_PART_KEY, part)
    return result


# -- tasks ------------------------------------------------------------------------------------
@app.task(bind=True, name="taiga_backup.change_password")
def change_password(self, **kwargs):
    """Moves both repositories to RESTIC_NEW_PASSWORD_FILE; safe to interrupt and to repeat."""
    return _run(self, "change_password", kwargs, {}, rotation.change_password)


@app.task(bind=True, name="taiga_backup.prune")
def prune(self, **kwargs):
    """Applies the retention policy to both repositories; kwargs: dry_run (bool)."""
    return _run(self, "prune", kwargs, {"dry_run": _dry_run},
                lambda job, dry_run=False: retention.prune(job, dry_run))


@app.task(bind=True, name="taiga_backup.check")
def check(self, **kwargs):
    """restic check of both repositories; kwargs: read_data_subset (n/t, x% or a size)."""
    return _run(self, "check", kwargs, {"read_data_subset": _read_data_subset}, check_repositories)


@app.task(bind=True, name="taiga_backup.verify")
def verify(self, **kwargs):
    """Restore drill of the latest backup into a scratch database and directory."""
    return _run(self, "verify", kwargs, {}, drill.verify)


# -- worker heartbeat -------------------------------------------------------------------------
_heartbeat: dict = {}


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    try:
        settings = load_settings()
        _heartbeat["stop"] = restic_locks.start_heartbeat(lambda: redis_connect(settings))
        _heartbeat["settings"] = settings
    except Exception as exc:
        log.error("could not start the worker heartbeat: %s", exc)


@signals.worker_shutdown.connect
def _stop_heartbeat(sender=None, **_):
    """A clean stop: this host's restic locks (if any were left) may be cleared at once."""
    if "stop" not in _heartbeat:
        return
    _heartbeat["stop"].set()
    try:
        restic_locks.heartbeat(redis_connect(_heartbeat["settings"]), socket.gethostname(), stopped=True)
    except Exception as exc:
        log.warning("could not record the worker's stop: %s", exc)
