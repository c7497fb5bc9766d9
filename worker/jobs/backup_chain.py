"""The backup's steps as the links of a Celery chain: what each link does around its step.

Why a module of its own: the steps (worker.jobs.backup_flow) are plain functions of a job and a
context, run the same in one process (take_backup) and in the chain. What only the chain needs
lives here - the link names, adopting the job's lease in every link (and renewing it across the
hand-over), the last link that writes the report, and the errback that tidies up after a link
that raised. The Celery tasks themselves (tasks/backup.py, tasks/backup_steps.py,
tasks/resume.py) are thin faces over these functions.
"""

from __future__ import annotations

import json
import time

from worker.adapters.redis_store import connect as redis_connect, report_key
from worker.errors import OperatorError
from worker.jobs import backup_flow, backup_guard, fleet, requests, steps
from worker.jobs.backup_context import BackupContext
from worker.jobs.held import held_here
from worker.jobs.job import Job, end_job, load_settings
from worker.jobs.lease import JobLock, LeaseLost

# the chain's task names, in order (tasks/backup_steps.py registers them; the resume link is the
# operator's own `taiga_backup.resume`, which takes a chain context as its one argument)
LINKS = {requests.PREFIX + name: step for name, step in backup_flow.STEPS.items()}
FINISH = requests.PREFIX + "finish"
ABORT = requests.PREFIX + "backup_failed"
ORDER = (*LINKS, FINISH)

# the job's lease in this process, renewed from one link to the next (JobLock.pause(grace))
_LEASES: dict[str, JobLock] = {}
# until when each job counts as running here between its links: its lease's grace (None while a
# link runs); a chain whose next link never came is over once that has passed
_UNTIL: dict[str, float | None] = {}
# the job's fleet slot in this process (worker.jobs.fleet), renewed while the job runs here
_SLOTS: dict[str, fleet.FleetSlot] = {}


def running_jobs() -> set[str]:
    """The backups whose chain goes on in this process, holding its lease: a link runs, or the
    next one is awaited within the lease's grace - what this worker answers the reconciler
    (worker.runtime.control). A job that lost its lease is not among them, even while its last
    link waits for the dump: what it held down is the reconciler's to resume."""
    now = time.monotonic()
    return {task_id for task_id, until in list(_UNTIL.items())
            if task_id in _LEASES and (until is None or now < until)}


def _pause(job: Job) -> None:
    """The link is over: the lease goes on being renewed for its grace, for the next link."""
    _UNTIL[job.task_id] = time.monotonic() + job.settings.lock_lease_seconds
    job.lease.pause(grace=job.settings.lock_lease_seconds)

is_context = BackupContext.accepts


def _link_job(task, ctx: BackupContext, name: str) -> Job:
    """The job as this link sees it, with the job's lease adopted (renewed while the link runs).
    A lease no longer ours is recorded (ctx.lost): every later step then stops short."""
    settings = load_settings()
    job = ctx.job(settings, task)
    if ctx.lost:
        return job
    lock = _LEASES.get(job.task_id) or JobLock(redis_connect(settings), settings.restic_repository,
                                                settings.lock_lease_seconds)
    try:
        lock.adopt(ctx.lease)
        job.lease = _LEASES[job.task_id] = lock
        _UNTIL[job.task_id] = None
    except LeaseLost as exc:
        lock.pause()
        _LEASES.pop(job.task_id, None)
        _UNTIL.pop(job.task_id, None)
        ctx.lost = True
        job.fail(name.removeprefix(requests.PREFIX), exc)
    return job


def run_link(task, doc: dict, name: str) -> dict:
    """One link of the chain: adopt the lease, run the step, pass the context on. Never raises
    for a step's failure: that is in the context, for finish."""
    ctx = BackupContext.from_json(doc)
    job = _link_job(task, ctx, name)
    try:
        LINKS[name](job, ctx)
    finally:
        if job.lease is not None:
            _pause(job)
    ctx.progress = job.progress_so_far
    return ctx.to_json()


def hand_over(job: Job) -> None:
    """The job's first task passes its lease, and its fleet slot, to the chain's links. The slot
    is renewed for as long as the job runs here (running_jobs): a chain that broke without its
    errback stops renewing it with its lease, and it expires."""
    _LEASES[job.task_id] = job.lease
    for gone in set(_SLOTS) - running_jobs():  # chains that broke here: their slots expire unrenewed
        _SLOTS.pop(gone, None)
    if job.slot is not None:
        task_id = job.task_id
        job.slot.keep = lambda: task_id in running_jobs()
        _SLOTS[task_id], job.slot = job.slot, None
    _pause(job)


def _end(job: Job) -> dict:
    """end_job, releasing the lease unless it was lost (it is another job's then), and the fleet
    slot always - by its name when it was taken in another process (the errback may run anywhere)."""
    _LEASES.pop(job.task_id, None)
    _UNTIL.pop(job.task_id, None)
    job.slot = _SLOTS.pop(job.task_id, None) or fleet.named_slot(job)
    return end_job(job, release=job.lease is not None)


def run_finish(task, doc: dict) -> dict:
    """The last link (it carries the id the caller got): the report, or JobFailed with the first
    error. A lost lease is not released: it is another job's now."""
    ctx = BackupContext.from_json(doc)
    job = _link_job(task, ctx, FINISH)
    try:
        backup_flow.finish(job, ctx)
    except Exception as exc:  # the report must still be written
        job.fail("finish", exc)
    return _end(job)


def _ended_already(settings, task_id: str) -> bool:
    """The job's report says it ended: the errback has nothing left to do."""
    raw = redis_connect(settings).get(report_key(settings.instance, task_id))
    return bool(raw) and json.loads(raw).get("state") != "STARTED"


def run_abort(task, doc: dict, failure: str) -> dict | None:
    """The second net (the chain's errback): a link raised instead of recording its failure.
    Resumes what this job holds down unless the lease is lost, waits for the steps still
    running here, forgets what carries this backup's tags and fails the job. Idempotent: an errback may run more than once.
    The steps still running are found in this process (held.held_here), not in the context: the
    errback carries the chain's first context, which names none, and forgetting before a
    background dump or retag has saved its snapshot would leave that snapshot behind."""
    ctx = BackupContext.from_json(doc)
    settings = load_settings()
    if _ended_already(settings, ctx.task_id):
        return None
    job = _link_job(task, ctx, ABORT)
    job.fail("chain", OperatorError(failure))
    if job.lease is not None:  # lost: the reconciler resumes what this job held down
        names = list(settings.quiesce_deployments)  # only what this job holds down
        steps.scale_back(job, steps.kube_for(job).for_job(job.task_id) if names else None, names)
    # a dump still streaming, a retag under way, end (or fail) before anything is forgotten: the
    # errback's context is the first link's, naming no held step, so they are found in this process
    ctx.held = held_here(ctx.task_id)
    backup_flow.join_all(job, ctx)
    backup_guard.forget_backup(job)
    return _ended(job)


def _ended(job: Job) -> dict:
    """end_job for the errback, which reports the failure rather than raising it again."""
    try:
        return _end(job)
    except OperatorError:
        return job.report
