"""The nightly backup as a sequence of steps, each a function of (job, ctx): prepare, media
pre-pass, quiesce, dump_db, restic_backup, resume, finish.

Why this shape: the app only has to be down while the media and the database are captured at
one point. So the media is read once with the app up (the pre-pass), and quiesced a second
`restic backup` with the pre-pass as parent reads only what changed; the database point is a
snapshot exported as soon as the app is down (postgres.ExportedSnapshot) that `pg_dump
--snapshot` streams into restic in the background - niced (DUMP_NICE), so the quiesced media
pass beside it keeps the CPU and the downtime stays short, while the dump uses what that pass
leaves and goes on while the app comes back. Only the quiesced pass and the dump are the
backup; the pre-pass is forgotten by `finish`.

Each step is a plain function so the Celery chain (tasks/backup_steps.py, one task per step)
and the in-process run (take_backup: tests, and whoever needs a backup without the queue) run
the same code. Steps never raise: a failure is recorded on the job and the later data steps
are skipped, while `resume` always runs once `quiesce` has started, and `finish` fails the job
with the first error. `ctx` is plain JSON, passed from link to link (Celery keeps it in Redis):
no secret goes in it. What cannot be JSON - the open snapshot transaction and the running pipe -
stays in this process (HELD) and pins the later links to this worker.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worker.adapters import postgres
from worker.adapters.redis_store import connect as redis_connect
from worker.adapters.restic import ResticError
from worker.backups import catalog, layout, restic_locks
from worker.errors import OperatorError
from worker.jobs import steps
from worker.jobs.job import Job, end_job, load_settings
from worker.jobs.lease import JobLock, LeaseLost

log = logging.getLogger("taiga_backup.backup")


class DumpLost(OperatorError):
    """The worker holding the dump's in-process state is not the one running this link."""


@dataclass
class Held:
    """What stays in the worker that exported the snapshot: the open transaction and the dump
    streaming it, which records its step and errors on a job of its own until finish merges them."""

    snapshot: postgres.ExportedSnapshot
    job: Job
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    thread: threading.Thread | None = None


HELD: dict[str, Held] = {}
_held_lock = threading.Lock()
# the job's lease in this process, renewed from one link to the next (JobLock.pause(grace))
LEASES: dict[str, JobLock] = {}


# the niceness of the background dump: it starts while the app is down, beside the quiesced media
# pass, and must not lengthen it (docs/performance.md); once the app is back nothing else runs in
# the pod, so the lower priority costs the dump nothing
DUMP_NICE = 10


def prepass_tags(job: Job) -> list[str]:
    """Not the backup's tags: catalog.pair skips these, so a pre-pass is never listed as a backup."""
    return [catalog.PREPASS_TAG, catalog.PREPASS_OF_TAG + job.report["backup_id"]]


def _skip(job: Job, ctx: dict) -> bool:
    """A data step runs only while nothing has failed and the lease is still ours."""
    if job.lease is not None and not ctx.get("lost"):
        try:
            job.lease.check()
        except LeaseLost as exc:
            ctx["lost"] = True
            job.fail("lease", exc)
    return bool(job.errors) or bool(ctx.get("lost"))


def _kube(job: Job, ctx: dict):
    return steps.kube_for(job) if ctx["names"] else None


# -- the steps ------------------------------------------------------------------------------

def prepare(job: Job, ctx: dict) -> None:
    """Everything that can fail before the app is touched, within PREFLIGHT_TIMEOUT: database
    reachable, Kubernetes answering for every deployment, the database repository open (one
    restic run: listing the locks opens the repository and shows whether anything is in the
    way) - all at once, since every restic run pays a key derivation. Only then is a missing
    repository created, or a lock in the way dealt with: a refused backup writes nothing. The
    media repository is checked by the pre-pass itself, the next step (one restic run fewer)."""
    settings = job.settings
    deadline = time.monotonic() + settings.preflight_timeout
    names = list(settings.quiesce_deployments)
    repo = layout.repository(settings, layout.DATABASE)

    def probe():
        try:
            return repo.locks(timeout=max(1.0, deadline - time.monotonic()))
        except ResticError as exc:
            if exc.kind == "no-repository":
                return None
            raise

    try:
        with job.step("preflight") as entry:
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="preflight") as pool:
                checks = [pool.submit(postgres.preflight, settings),
                          pool.submit(lambda: names and steps.kube_for(job).preflight(names)), pool.submit(probe)]
                facts, _, locks = [future.result() for future in checks]  # the first failure in this order
            if locks is None:
                repo.run("init", timeout=max(1.0, deadline - time.monotonic()))
                entry.setdefault("initialised", []).append(repo.name)
            elif locks:
                _make_way(job, repo, entry)
            entry["database_bytes"] = facts["size_bytes"]
            ctx.update(names=names, db_size=facts["size_bytes"])
    except Exception:
        pass  # recorded by the step; finish fails the job


def _make_way(job: Job, repo, entry: dict) -> None:
    """Stale locks of ours (crashed pods, other host names) go; a live holder is waited for."""
    done = restic_locks.make_way(job.settings, repo, redis_connect(job.settings), exclusive=False,
                                 on_wait=lambda msg: job.progress(entry.get("step", "preflight"), None, msg))
    entry.setdefault("locks_removed", []).extend(done.get("locks_removed", []))


def _files_ready(job: Job):
    def make_ready(repo, exc: ResticError, entry: dict) -> bool:
        if exc.kind == "no-repository":
            repo.run("init", timeout=job.settings.preflight_timeout)
            entry.setdefault("initialised", []).append(repo.name)
            return True
        if exc.kind == "locked":
            _make_way(job, repo, entry)
            return True
        return False

    return make_ready


def media_prepass(job: Job, ctx: dict) -> None:
    """The media read while the app is still up: it uploads nearly everything, so the quiesced
    pass after it has little left to read. It opens (and on first use creates) the media
    repository."""
    if _skip(job, ctx):
        return
    try:
        summary = steps.restic_backup(job, step="media_prepass", tags=prepass_tags(job), full_id=False,
                                      make_ready=_files_ready(job))
        ctx["prepass"] = summary["snapshot_id"]
        ctx["prepass_summary"] = summary
    except Exception:
        pass


def quiesce(job: Job, ctx: dict) -> None:
    if _skip(job, ctx):
        return
    ctx["quiesced"] = True  # from here on, resume runs whatever happens
    ctx["down_since"] = time.time()
    try:
        steps.quiesce(job, _kube(job, ctx), ctx["names"])
    except Exception:
        pass


def dump_db(job: Job, ctx: dict) -> None:
    """Exports the database snapshot (the consistency point, taken while quiesced) and starts
    `pg_dump --snapshot` | restic on it in the background, niced; returns at once, so the
    quiesced media pass runs beside it and the app can come back while the dump streams. With
    BACKUP_PARALLEL=false it waits for the dump here."""
    if _skip(job, ctx):
        return
    try:
        with job.step("db_snapshot") as entry:
            snapshot = postgres.ExportedSnapshot(job.settings)
            entry["snapshot"] = snapshot.id
    except Exception:
        return
    child = Job(job.kind, job.settings, job.task)
    child.task_id = job.task_id
    child.report.update(backup_id=job.report["backup_id"], trigger=job.report.get("trigger", "manual"))
    held = Held(snapshot, child)

    def stream():
        try:
            held.result = steps.dump_db(child, ctx["db_size"], snapshot=snapshot.id, full_id=False, nice=DUMP_NICE)
        except Exception:
            pass  # recorded on the child job
        finally:
            snapshot.close()
            held.done.set()

    held.thread = threading.Thread(target=stream, name=f"dump-{job.task_id[:8]}", daemon=True)
    with _held_lock:
        HELD[job.task_id] = held
    ctx["dump_started"] = True
    held.thread.start()
    if not job.settings.parallel_backup:
        held.done.wait()


def restic_backup(job: Job, ctx: dict) -> None:
    """The quiesced media pass, with the pre-pass as parent."""
    if _skip(job, ctx):
        return
    try:
        summary = steps.restic_backup(job, parent=ctx.get("prepass"), full_id=False)
        ctx.setdefault("results", {})[layout.FILES] = with_prepass(summary, ctx.get("prepass_summary"))
    except Exception:
        pass


def with_prepass(summary: dict, prepass: dict | None) -> dict:
    """What the backup added is what both passes added: the pre-pass found the night's new and
    changed files, the quiesced pass the few changed since. Totals are the quiesced pass's."""
    if not prepass:
        return summary
    return {**summary, **{k: summary[k] + prepass[k] for k in ("data_added", "files_new", "files_changed")}}


def resume(job: Job, ctx: dict) -> None:
    """Runs once quiesce has started, whatever failed - unless the lease was lost: then another
    job may have quiesced the app itself, and scaling it up would be the harm to avoid (the
    reconciler resumes it once no job holds the lease)."""
    if not ctx.get("quiesced") or ctx.get("lost"):
        return
    ctx["deployments"] = steps.resume(job, _kube(job, ctx), ctx["names"])
    ctx["downtime_seconds"] = round(time.time() - ctx["down_since"], 3) if ctx["names"] else 0.0


def _wait_for_dump(job: Job, ctx: dict) -> None:
    if not ctx.get("dump_started"):
        return
    with _held_lock:
        held = HELD.pop(job.task_id, None)
    if held is None:
        job.fail("dump_db", DumpLost("the database dump ran in a worker process that is gone (it was "
                                     "restarted, or this link ran elsewhere): no database snapshot"))
        return
    held.done.wait()
    job.report["steps"].update(held.job.report["steps"])
    for error in held.job.errors:
        if error not in job.errors:
            job.errors.append(error)
    if held.result:
        ctx.setdefault("results", {})[layout.DATABASE] = held.result


def _tidy_files(job: Job, results: dict) -> None:
    """The quiesced pass's full id for the report (restic 0.14 prints short ones; the local cache
    has it) and every media pre-pass forgotten - this job's, and any a crashed job left: they
    were only parents - in one restic run, while the dump still streams. A pre-pass left behind
    is logged, not a failure (the next backup forgets it)."""
    repo = layout.repository(job.settings, layout.FILES)
    if layout.FILES in results:
        short = results[layout.FILES]["snapshot_id"]
        results[layout.FILES]["snapshot_id"] = repo.full_ids([short], timeout=job.settings.discard_timeout).get(short, short)
    try:
        repo.forget_tagged(catalog.PREPASS_TAG, timeout=job.settings.discard_timeout)
        job.report["prepass_forgotten"] = True
    except Exception as exc:
        log.warning("could not forget the media pre-pass snapshot(s): %s", exc)


def _tidy_database(job: Job, results: dict) -> None:
    short = results[layout.DATABASE]["snapshot_id"]
    found = layout.repository(job.settings, layout.DATABASE).full_ids([short], timeout=job.settings.discard_timeout)
    results[layout.DATABASE]["snapshot_id"] = found.get(short, short)


def finish(job: Job, ctx: dict) -> dict:
    """Waits for the dump, completes the report and decides what the snapshots are worth: a
    backup whose only failure is a slow resume is complete and kept (the report says what did
    not come back); any other failure forgets what was made, pre-pass included. After a lost
    lease nothing is touched: the repositories may be another job's now (the reconciler and
    the next backup tidy up). The media side is tidied while the dump still streams."""
    results = ctx.setdefault("results", {})
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-tidy") as pool:
        files = pool.submit(_tidy_files, job, results) if layout.FILES in results and not ctx.get("lost") else None
        _wait_for_dump(job, ctx)
        resume_error = (job.report["steps"].get("resume") or {}).get("error")
        complete = set(results) == set(layout.NAMES)
        keep = not job.errors or (complete and job.errors == [resume_error])
        try:
            if files is not None:
                files.result()
            if keep and not ctx.get("lost") and layout.DATABASE in results:
                _tidy_database(job, results)
        except Exception as exc:
            job.fail("finish", exc)
    report = {
        **steps.summarize(job.settings, results),
        "deployments": ctx.get("deployments", {}),
        "downtime_seconds": ctx.get("downtime_seconds", 0.0),
        "backup_complete": complete and keep,
    }
    if job.errors and keep:
        report["not_back"] = resume_error
    elif job.errors and not ctx.get("lost"):
        made = {name: [r["snapshot_id"]] for name, r in results.items()}
        if ctx.get("prepass") and not job.report.get("prepass_forgotten"):
            made.setdefault(layout.FILES, []).append(ctx["prepass"])
        steps.discard(job, made)
    job.report.update(report)
    return report


# -- the steps as links of a Celery chain ------------------------------------------------------

# the chain's task names, in order (tasks/backup_steps.py registers them; the resume link is the
# operator's own `taiga_backup.resume`, which takes a chain context as its one argument)
PREFIX = "taiga_backup."
LINKS = {PREFIX + "prepare": prepare, PREFIX + "media_prepass": media_prepass, PREFIX + "quiesce": quiesce,
         PREFIX + "dump_db": dump_db, PREFIX + "restic_backup": restic_backup, PREFIX + "resume": resume}
FINISH = PREFIX + "finish"
ABORT = PREFIX + "backup_failed"


def is_context(args: tuple, kwargs: dict) -> bool:
    """A message carrying a backup chain's context (and nothing else)."""
    return len(args) == 1 and not kwargs and isinstance(args[0], dict) and args[0].get("kind") == "backup" \
        and isinstance(args[0].get("task_id"), str) and isinstance(args[0].get("lease"), str)


def _link_job(task, ctx: dict, name: str) -> Job:
    """The job as this link sees it, with the job's lease adopted (renewed while the link runs).
    A lease no longer ours is recorded (ctx["lost"]): every later step then stops short."""
    settings = load_settings()
    job = Job.from_context(ctx, settings, task)
    if ctx.get("lost"):
        return job
    lock = LEASES.get(job.task_id) or JobLock(redis_connect(settings), settings.restic_repository,
                                               settings.lock_lease_seconds)
    try:
        lock.adopt(ctx["lease"])
        job.lease = LEASES[job.task_id] = lock
    except LeaseLost as exc:
        lock.pause()
        LEASES.pop(job.task_id, None)
        ctx["lost"] = True
        job.fail(name.removeprefix(PREFIX), exc)
    return job


def run_link(task, ctx: dict, name: str) -> dict:
    """One link of the chain: adopt the lease, run the step, pass the context on. Never raises
    for a step's failure: that is in ctx, for finish."""
    job = _link_job(task, ctx, name)
    try:
        LINKS[name](job, ctx)
    finally:
        if job.lease is not None:
            job.lease.pause(grace=job.settings.lock_lease_seconds)
    ctx["progress"] = job._progress
    return ctx


def hand_over(job: Job) -> None:
    """The job's first task passes its lease to the chain's links."""
    LEASES[job.task_id] = job.lease
    job.lease.pause(grace=job.settings.lock_lease_seconds)


def _end(job: Job) -> dict:
    """end_job, releasing the lease unless it was lost (it is another job's then)."""
    LEASES.pop(job.task_id, None)
    return end_job(job, release=job.lease is not None)


def run_finish(task, ctx: dict) -> dict:
    """The last link (it carries the id the caller got): the report, or JobFailed with the first
    error. A lost lease is not released: it is another job's now."""
    job = _link_job(task, ctx, FINISH)
    try:
        finish(job, ctx)
    except Exception as exc:  # the report must still be written
        job.fail("finish", exc)
    return _end(job)


def run_abort(task, ctx: dict, failure: str) -> dict | None:
    """The second net (the chain's errback): a link raised instead of recording its failure.
    Waits for a dump still streaming here, resumes the app unless the lease is lost, forgets
    what this backup made and fails the job. Idempotent: an errback may run more than once."""
    settings = load_settings()
    done = redis_connect(settings).get(f"taiga-backup:report:{ctx['task_id']}")
    if done and b'"state": "STARTED"' not in done:
        return None
    job = _link_job(task, ctx, ABORT)
    job.fail("chain", OperatorError(failure))
    if job.lease is not None:
        names = list(settings.quiesce_deployments)
        steps.resume(job, steps.kube_for(job) if names else None, names)
    _wait_for_dump(job, ctx)
    if job.lease is None:  # lost: the repositories may be another job's now
        return _ended(job)
    made: dict = {}
    try:
        ours = {catalog.ID_TAG + job.report.get("backup_id", "?"), catalog.PREPASS_OF_TAG + job.report.get("backup_id", "?")}
        for name, repo in layout.both(settings).items():
            made[name] = [s["id"] for s in repo.snapshots(timeout=settings.discard_timeout)
                          if ours & set(s.get("tags") or [])]
    except Exception as exc:
        job.fail("discard", exc)
    steps.discard(job, made)
    return _ended(job)


def _ended(job: Job) -> dict:
    """end_job for the errback, which reports the failure rather than raising it again."""
    try:
        return _end(job)
    except OperatorError:
        return job.report


# -- the whole backup in one process ------------------------------------------------------------

ORDER = tuple(LINKS.values())


def start(job: Job, trigger: str) -> dict:
    """The job's first facts, and the context the steps pass on."""
    job.report.update(backup_id=steps.new_backup_id(), trigger=trigger)
    if job.lease is not None:
        job.lease.note(backup_id=job.report["backup_id"])
    return job.context(names=[], db_size=0)


def take_backup(job: Job, trigger: str) -> dict:
    """Every step in this process, in the chain's order: what the chain does, without a queue."""
    ctx = start(job, trigger)
    for step in ORDER:
        step(job, ctx)
    return finish(job, ctx)
