"""What every taiga-backup job shares: settings, the one-job-per-repository lease, timed steps,
throttled progress for Celery/Flower, and a report that is stored in Redis whatever happens.

A job never reports success unless every step succeeded; it ends FAILURE with the *first* error
(later ones, e.g. from resume, are kept in the report's `errors`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone

from worker import redact
from worker.adapters.redis_store import REPORT_TTL, connect as redis_connect, last_report_key, report_key
from worker.errors import JobFailed, LeaseBusy, OperatorError
from worker.jobs import hooks
from worker.jobs.lease import JobBusy, JobLock
from worker.settings import Settings, SettingsError

log = logging.getLogger("taiga_backup.job")
PROGRESS_INTERVAL = 1.0


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Job:
    """One running job: report, step timings, progress."""

    def __init__(self, kind: str, settings: Settings, task=None):
        self.kind = kind
        self.settings = settings
        self.task = task
        self.task_id = (task.request.id if task is not None and task.request.id else None) or str(uuid.uuid4())
        self.report: dict = {"job": kind, "task_id": self.task_id, "state": "STARTED", "started_at": now_iso(),
                             "steps": {}}
        self.errors: list[str] = []
        self.lease = None  # the JobLock, once run_job holds it
        self.slot = None  # a backup's fleet slot (worker.jobs.fleet), released when the job ends
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._progress: dict[str, dict] = {}
        self._pushed = 0.0

    # -- progress ---------------------------------------------------------------------------
    def progress(self, step: str, percent: float | None = None, message: str | None = None,
                 force: bool = False) -> None:
        with self._lock:
            entry = self._progress.setdefault(step, {})
            if percent is not None:
                entry["percent"] = round(max(0.0, min(100.0, percent)), 1)
            if message:
                entry["message"] = message
            now = time.monotonic()
            if not force and now - self._pushed < PROGRESS_INTERVAL:
                return
            self._pushed = now
            meta = {"job": self.kind, "step": step, "percent": entry.get("percent"),
                    "message": entry.get("message"), "steps": json.loads(json.dumps(self._progress)),
                    "elapsed_seconds": round(now - self._t0, 1)}
        if self.task is not None:
            try:
                # explicit id: Celery's request context is thread-local and steps run in threads
                self.task.update_state(task_id=self.task_id, state="PROGRESS", meta=meta)
            except Exception as exc:  # progress is best effort; the job goes on
                log.warning("could not publish progress: %s", exc)

    # -- steps ------------------------------------------------------------------------------
    @contextmanager
    def step(self, name: str):
        """Times a step, logs one line when it ends, records any error (the first one wins)."""
        t0 = time.monotonic()
        self.progress(name, 0.0, "started", force=True)
        fields = {"task_id": self.task_id, "job": self.kind, "step": name}  # structured, for LOG_FORMAT=json
        log.info("%s: %s started", self.kind, name, extra=fields)
        entry = {"started_at": now_iso()}
        try:
            yield entry
        except Exception as exc:
            entry["error"] = self.fail(name, exc)
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 3)
            entry["ok"] = "error" not in entry
            self.report["steps"][name] = entry
            log.info("%s: %s %s in %.1fs", self.kind, name, "finished" if entry["ok"] else "FAILED", entry["seconds"],
                     extra={**fields, "duration_seconds": entry["seconds"]})
            if entry["ok"]:
                self.progress(name, 100.0, "done", force=True)

    def fail(self, step: str, exc: BaseException) -> str:
        message = redact.redact(f"{step}: {exc}")
        with self._lock:
            if message not in self.errors:
                self.errors.append(message)
        return message

    def in_parallel(self, work: dict) -> dict:
        """Runs each callable (name -> fn, each using job.step inside) in its own thread; returns
        the results of those that succeeded. A failure was recorded by its step: it is only left out."""
        results: dict = {}
        with ThreadPoolExecutor(max_workers=max(1, len(work)), thread_name_prefix=f"{self.kind}-step") as pool:
            futures = {name: pool.submit(fn) for name, fn in work.items()}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception:
                    pass
        return results

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    # -- a job made of several tasks --------------------------------------------------------
    @property
    def progress_so_far(self) -> dict[str, dict]:
        """Every step's last progress, as Flower shows it: carried from one chain link to the next."""
        with self._lock:
            return json.loads(json.dumps(self._progress))

    def started_epoch(self) -> float:
        """When the job began (time.time()), for a later link to go on timing it."""
        return time.time() - self.elapsed()

    @classmethod
    def carried(cls, kind: str, settings: Settings, task, *, task_id: str, report: dict, errors: list[str],
                progress: dict, started: float) -> "Job":
        """The job a later task of a multi-task job works for: the first task's id (progress,
        report and lease are the job's, not the task's), the report and errors so far, the
        progress shown so far and its start time."""
        job = cls(kind, settings, task)
        job.task_id = task_id
        job.report = report
        job.errors = errors
        job._progress = progress
        job._t0 = time.monotonic() - max(0.0, time.time() - started)
        return job


def store_report(settings: Settings, report: dict) -> None:
    try:
        client = redis_connect(settings)
        payload = json.dumps(report, sort_keys=True)
        client.set(report_key(settings.instance, report["task_id"]), payload, ex=REPORT_TTL)
        client.set(last_report_key(settings.instance, report["job"], report["state"]), payload)
    except Exception as exc:
        log.warning("could not store the job report in Redis: %s", exc)


def _safe(hook, *args) -> None:
    """Metrics and notifications never change a job's outcome."""
    try:
        hook(*args)
    except Exception as exc:
        log.warning("%s failed: %s", getattr(hook, "__name__", hook), redact.redact(str(exc)))


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise JobFailed(f"invalid setting: {exc}") from None
    redact.register(*settings.secrets())
    return settings


def begin_job(task, kind: str, *, exclusive: bool = True, notify_refusal: bool = False,
              handed: JobLock | None = None) -> Job:
    """The job and its lease (job.lease); raises LeaseBusy when another job holds the repository.
    notify_refusal: a refused run is a failed run for whoever watches (webhook, ping, metric),
    unless it will be retried (run_scheduled). handed: a lease another job of this process
    transferred to this one (JobLock.transfer), adopted instead of taken (LeaseLost if gone)."""
    settings = load_settings()
    job = Job(kind, settings, task)
    lock = handed or JobLock(redis_connect(settings), settings.restic_repository, settings.lock_lease_seconds)
    job.lease = lock
    if handed is not None:
        handed.adopt(handed.value)
    elif exclusive:
        try:
            lock.acquire(kind, job.task_id)
        except JobBusy as exc:
            if notify_refusal:
                job.errors.append(str(exc))
                end_job(job, release=False)
            raise LeaseBusy(str(exc)) from None
    _safe(hooks.job_started, settings, kind, job.task_id)
    return job


def record_refusal(task_name: str, task_id: str | None, error: str) -> None:
    """A request refused before its task ran (one for another instance): a failed run of its kind
    for whoever watches - a stored report, the metrics, the webhook - like a refused backup."""
    try:
        settings = load_settings()
    except JobFailed:
        return  # the worker refused to start anyway
    kind = task_name.rsplit(".", 1)[-1]
    report = {"job": kind, "task_id": task_id or str(uuid.uuid4()), "state": "FAILURE", "started_at": now_iso(),
              "finished_at": now_iso(), "duration_seconds": 0.0, "steps": {}, "error": error, "errors": [error]}
    store_report(settings, report)
    _safe(hooks.job_finished, settings, report)


def record_failure(job: Job, kind: str, exc: BaseException) -> None:
    """An exception that ended a job body: recorded unless a step already recorded one."""
    if not job.errors:
        text = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
        job.errors.append(redact.redact(text))
    if isinstance(exc, OperatorError):
        log.error("%s failed: %s", kind, redact.redact(str(exc)))
    else:
        log.exception("%s failed", kind)


def end_job(job: Job, *, release: bool = True) -> dict:
    """Stores the final report, tells metrics and notifications, lets the lease go; returns the
    report, or raises JobFailed with the first error."""
    try:
        job.report["finished_at"] = now_iso()
        job.report["duration_seconds"] = round(job.elapsed(), 3)
        if job.errors:
            job.report.update(state="FAILURE", error=job.errors[0], errors=job.errors)
        else:
            job.report["state"] = "SUCCESS"
        store_report(job.settings, job.report)
        _safe(hooks.job_finished, job.settings, job.report)
        if job.errors:
            raise JobFailed(job.errors[0])
        return job.report
    finally:
        if job.slot is not None:  # the slot is the job's alone, even when its lease was lost
            job.slot.release()
            job.slot = None
        if release and job.lease is not None:
            job.lease.release()


def run_job(task, kind: str, body, *, exclusive: bool = True) -> dict:
    """Runs body(job) under the repository lease; returns the report or raises JobFailed."""
    job = begin_job(task, kind, exclusive=exclusive, notify_refusal=kind == "backup")
    try:
        result = body(job) or {}
    except Exception as exc:
        record_failure(job, kind, exc)
    else:
        job.report.update(result)
    return end_job(job, release=exclusive)


# a scheduled job's message lives this long (beat sends it with this `expires`): a missed night
# is not run the next morning; one that finds the repository busy retries within it
SCHEDULED_LIFETIME = 6 * 3600


def busy_countdown(retries: int) -> float:
    """Seconds before a scheduled job that found the repository busy tries again: 5 s doubling to 5 min."""
    return min(300, 5 * 2 ** retries)


def _retries_within(seconds: float) -> int:
    count, waited = 0, 0.0
    while waited < seconds:
        waited += busy_countdown(count)
        count += 1
    return count


BUSY_RETRIES = _retries_within(SCHEDULED_LIFETIME)


def run_scheduled(task, kind: str, trigger: str, body) -> dict:
    """run_job for a job beat may trigger: a scheduled one that finds the lease taken (a long
    backup overrunning into the prune slot) comes back later, 5 s doubling to 5 min, instead of
    failing, for as long as its message lives; a manual request fails at once, naming the job in
    the way."""

    def with_trigger(job: Job) -> dict:
        job.report["trigger"] = trigger
        return body(job)

    try:
        return run_job(task, kind, with_trigger)
    except LeaseBusy as exc:
        if trigger != "schedule" or task is None:
            raise
        log.info("%s: %s; trying again later", task.name, exc)
        raise task.retry(countdown=busy_countdown(task.request.retries or 0), max_retries=BUSY_RETRIES)
