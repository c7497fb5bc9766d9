"""The nightly backup as a sequence of steps, each a function of (job, ctx): prepare, media
pre-pass, quiesce, dump_db, restic_backup, resume, finish.

Why this shape: the app only has to be down while the media and the database are captured at
one point. So the media is read once with the app up (the pre-pass), and quiesced a second
`restic backup` with the pre-pass as parent reads only what changed; the database point is a
snapshot exported as soon as the app is down (postgres.ExportedSnapshot) that `pg_dump
--snapshot` streams into restic in the background - niced (DUMP_NICE), so the quiesced media
pass beside it keeps the CPU and the downtime stays short, while the dump uses what that pass
leaves and goes on while the app comes back. The pods take a moment to stop, and that moment is
spent on the pre-pass's last seconds: the quiesce starts once the pre-pass is estimated to end
within it (prepass_eta), and the quiesced pass waits for the pre-pass's end. Only the quiesced
pass and the dump are the backup; the pre-pass is forgotten once the quiesced pass is done.

Each step is a plain function so the Celery chain (tasks/backup_steps.py, one task per step)
and the in-process run (take_backup: tests, and whoever needs a backup without the queue) run
the same code. Steps never raise: a failure is recorded on the job and the later data steps
are skipped, while `resume` always runs once `quiesce` has started, and `finish` fails the job
with the first error. `ctx` is the BackupContext passed from link to link as JSON (Celery keeps
it in Redis): no secret goes in it. What cannot be JSON - the pre-pass's last seconds, the open snapshot
transaction and the running pipe, the media tidy-up - runs on in this process (worker.jobs.held,
joined by a later link) and pins the later links to this worker.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from worker.adapters import postgres
from worker.adapters.redis_store import connect as redis_connect, last_report_key
from worker.adapters.restic import ResticError
from worker.backups import catalog, layout, media, restic_locks, tree_state
from worker.backups.backup_eta import BackupEta
from worker.jobs import backup_guard, fleet, steps
from worker.jobs.backup_context import BackupContext
from worker.jobs.held import hold, join_held
from worker.jobs.job import Job
from worker.jobs.lease import LeaseLost
from worker.pause_points import pause_point

log = logging.getLogger("taiga_backup.backup")

# test-only (worker.pause_points): a worker killed in resume, before it checked the quiesced window
RESUME_PAUSE = "backup_resume"


# the niceness of the background dump: it starts while the app is down, beside the quiesced media
# pass, and must not lengthen it (docs/performance.md); once the app is back nothing else runs in
# the pod, so the lower priority costs the dump nothing
DUMP_NICE = 10


def _skip(job: Job, ctx: BackupContext) -> bool:
    """A data step runs only while nothing has failed and the lease is still ours."""
    if job.lease is not None and not ctx.lost:
        try:
            job.lease.check()
        except LeaseLost as exc:
            ctx.lost = True
            job.fail("lease", exc)
    return bool(job.errors) or bool(ctx.lost)


def _kube(job: Job, ctx: BackupContext):
    return steps.kube_for(job) if ctx.names else None


# -- the steps ------------------------------------------------------------------------------

def prepare(job: Job, ctx: BackupContext) -> None:
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
        with job.step(backup_guard.FIRST_STEP) as entry:
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
            ctx.names, ctx.db_size = names, facts["size_bytes"]
    except Exception:
        pass  # recorded by the step; finish fails the job


def _make_way(job: Job, repo, entry: dict) -> None:
    """Stale locks of ours (crashed pods, other host names) go; a live holder is waited for."""
    done = restic_locks.make_way(job.settings, repo, redis_connect(job.settings), exclusive=False,
                                 on_wait=lambda msg: job.progress(entry.get("step", backup_guard.FIRST_STEP), None, msg))
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


def prepass_eta(job: Job) -> BackupEta:
    """When the quiesce starts: as long before the media pre-pass's estimated end as the last
    successful backup's quiesce took (the pods' stop time), at most QUIESCE_LEAD_MAX; never
    early when nothing is known yet, or the steps run one after the other (BACKUP_PARALLEL=false).
    That backup's file count tells when restic has scanned the whole tree."""
    if job.settings.quiesce_lead_max <= 0 or not job.settings.parallel_backup:
        return BackupEta(0.0)
    try:
        last = json.loads(redis_connect(job.settings).get(last_report_key(job.settings.instance, "backup", "SUCCESS")) or "{}")
        seconds = float(last["steps"]["quiesce"]["seconds"]) if last else 0.0
        files = (last.get("files") or {}).get("total_files_processed")
    except Exception as exc:  # a guess, never a failure: without it the quiesce waits for the pre-pass
        log.warning("could not read the last backup's quiesce time: %s", exc)
        return BackupEta(0.0)
    return BackupEta(max(0.0, min(seconds, job.settings.quiesce_lead_max)), expected_files=files)


def media_prepass(job: Job, ctx: BackupContext) -> None:
    """The media read while the app is still up: it uploads nearly everything, so the quiesced
    pass after it has little left to read. It opens (and on first use creates) the media
    repository. It runs on in this worker while the app quiesces, once it is estimated to end
    within the quiesce's time (prepass_eta): the pods stop while restic writes its last packs,
    and restic_backup waits for its end. A pre-pass that fails before that fails here, with
    the app never touched."""
    if _skip(job, ctx):
        return
    tree = _settled_look(job)  # before restic reads a byte: what the quiesced point is compared with
    if tree is not None:
        ctx.tree = tree.as_dict()
    eta = prepass_eta(job)
    held = hold(job, ctx.held, "media_prepass", lambda child: steps.backup_media(
        child, step="media_prepass", tags=catalog.prepass_tags(job.report["backup_id"]), full_id=False, make_ready=_files_ready(job),
        watch=eta))
    while not held.done.wait(0.05) and not eta.near.is_set():
        pass
    if not held.done.is_set() and job.settings.media_catchup_passes and not _still(job, ctx):
        held.done.wait()  # media were written meanwhile: a catch-up pass follows, the quiesce waits
    if held.done.is_set():
        _prepass_joined(job, ctx)
        _catch_up(job, ctx)
    else:
        ctx.prepass_ends_in = round(eta.remaining, 3)
        log.info("backup: quiescing while the media pre-pass ends (about %.1f s left)", eta.remaining,
                 extra={"task_id": job.task_id, "job": job.kind, "step": "media_prepass"})


def _still(job: Job, ctx: BackupContext, now: tree_state.TreeState | None = None) -> bool:
    """The media tree is, for certain, as it was just before the last pass began (taking a look
    unless given one: only compared, it needs no stamps)."""
    if not ctx.tree:
        return False
    now = now or _look(job, stamps=False)
    return now is not None and tree_state.unchanged(tree_state.TreeState.from_dict(ctx.tree), now)


def _catch_up(job: Job, ctx: BackupContext) -> None:
    """Media written while the pre-pass ran (a night's upload), read with the app still up:
    another restic pass with the pre-pass as parent reads only what changed, and becomes the
    pass the quiesced tree is compared with. So the app is down only for the quiesce and a look
    at the tree, unless something is written again during the last of MEDIA_CATCHUP_PASSES
    passes (then the quiesced pass reads it, as before). The pass it replaces is forgotten once
    the backup has its media snapshot (ctx.superseded). A failing catch-up pass fails the job
    like the pre-pass, with the app never touched."""
    for n in range(1, job.settings.media_catchup_passes + 1):
        if not ctx.prepass:
            return
        now = _settled_look(job)
        if now is None or _still(job, ctx, now):
            return
        try:
            summary = steps.backup_media(job, step="media_catchup", tags=catalog.prepass_tags(job.report["backup_id"]),
                                         parent=ctx.prepass, full_id=False)
        except Exception:
            return  # recorded by the step; the later links skip, finish fails the job
        job.report["steps"]["media_catchup"]["passes"] = n
        ctx.superseded.append(ctx.prepass)
        ctx.prepass, ctx.prepass_summary = summary["snapshot_id"], with_prepass(summary, ctx.prepass_summary)
        ctx.tree = now.as_dict()


def _settled_look(job: Job) -> tree_state.TreeState | None:
    """A look taken once the newest entry is no longer racily new, waiting for that (at most
    RACY_SECONDS, the app up): an upload just written would otherwise make the tree count as
    changed at the quiesce whatever happens after, and the quiesced pass run."""
    now = _look(job)
    wait = now.quiet_at - time.time() if now is not None and now.racy else 0.0
    if 0 < wait <= tree_state.RACY_SECONDS:
        time.sleep(wait + 0.01)
        now = _look(job)
    return now


def _prepass_joined(job: Job, ctx: BackupContext) -> None:
    """The pre-pass's end, taken over by this link: its snapshot becomes the quiesced pass's
    parent; how long it ran on after the quiesce began is in its step entry."""
    held = join_held(job, ctx.held, "media_prepass")
    if held is None:
        return
    entry = job.report["steps"].get("media_prepass")
    if entry is not None and ctx.down_since:
        entry["quiesce_overlap_seconds"] = round(max(0.0, held.ended - ctx.down_since), 3)
        entry["estimated_seconds_left"], ctx.prepass_ends_in = ctx.prepass_ends_in, None
    if held.result:
        ctx.prepass = held.result["snapshot_id"]
        ctx.prepass_summary = held.result


def quiesce(job: Job, ctx: BackupContext) -> None:
    if _skip(job, ctx):
        return
    ctx.quiesced = True  # from here on, resume runs whatever happens
    ctx.down_since = time.time()
    try:
        steps.scale_down(job, _kube(job, ctx), ctx.names)
    except Exception:
        pass


def dump_db(job: Job, ctx: BackupContext) -> None:
    """Exports the database snapshot (the consistency point, taken while quiesced) and starts
    `pg_dump --snapshot` | restic on it in the background, niced; returns at once, so the
    quiesced media pass runs beside it and the app can come back while the dump streams. With
    BACKUP_PARALLEL=false it waits for the dump here."""
    if _skip(job, ctx):
        return
    try:
        with job.step("db_snapshot") as entry:
            snapshot = postgres.ExportedSnapshot(job.settings)
            # the backup's time: both snapshots carry it (catalog.POINT_TAG, restic's --time)
            job.report["consistency_point"] = catalog.point_stamp(time.time())
            entry.update(snapshot=snapshot.id, consistency_point=job.report["consistency_point"])
    except Exception:
        return
    held = hold(job, ctx.held, "dump_db", lambda child: steps.stream_dump(
        child, ctx.db_size, snapshot=snapshot.id, full_id=False, nice=DUMP_NICE), snapshot=snapshot)
    if not job.settings.parallel_backup:
        held.done.wait()


def restic_backup(job: Job, ctx: BackupContext) -> None:
    """The quiesced media pass, with the pre-pass as parent: first the pre-pass's end, if it
    was still running while the app quiesced. When nothing in the media changed since just
    before the pre-pass began (tree_state), the pre-pass already is the media at this point:
    it becomes the backup's snapshot (retagged in the background) and no second restic run
    keeps the app down."""
    _prepass_joined(job, ctx)
    if _skip(job, ctx):
        return
    if _media_unchanged(job, ctx):
        ctx.results[layout.FILES] = dict(ctx.prepass_summary)
        short, tags = ctx.prepass, steps.backup_tags(job)
        superseded = list(ctx.superseded)
        hold(job, ctx.held, "tidy_files", lambda child: _promote(job.settings, short, tags, superseded))
        return
    try:
        summary = steps.backup_media(job, parent=ctx.prepass, full_id=False)
        ctx.results[layout.FILES] = with_prepass(summary, ctx.prepass_summary)
    except Exception:
        return
    if not ctx.lost:
        hold(job, ctx.held, "tidy_files", lambda child: _tidy_files(job.settings, summary["snapshot_id"]))


def _look(job: Job, stamps: bool = True) -> tree_state.TreeState | None:
    """The media tree's state; None when an entry went away mid-walk (restic then reads what changed).
    The worker's state is left out: each signed link of the backup records its nonce there."""
    t0 = time.monotonic()
    try:
        return tree_state.take(job.settings.files_dir, skip=(media.STATE,), stamps=stamps)
    except OSError as exc:
        log.info("backup: the media tree changed while it was looked at (%s)", exc)
        return None
    finally:  # what each look cost, in order (the bench's tree-walk figures)
        job.report.setdefault("media_looks_seconds", []).append(round(time.monotonic() - t0, 3))


def _media_unchanged(job: Job, ctx: BackupContext) -> bool:
    """Looks at the media tree again, with the app down: True when it is as it was just before
    the last pass with the app up (the pre-pass or its catch-up) began."""
    if not ctx.prepass:
        return False
    t0 = time.monotonic()
    if not _still(job, ctx):
        return False
    with job.step("restic_backup") as entry:
        entry.update(media_unchanged_since_prepass=True, looked_seconds=round(time.monotonic() - t0, 3),
                     snapshot_id=ctx.prepass)
    return True


def _promote(settings, short: str, tags: list[str], superseded: list[str] = ()) -> dict:
    """The pre-pass (or the catch-up pass after it) made the backup's media snapshot: the
    backup's tags instead of the pre-pass's (restic saves it anew: the new full id is the
    report's). The passes a catch-up replaced are forgotten; one that cannot be is logged, not a
    failure (the next quiesced pass forgets every pre-pass left)."""
    repo = layout.repository(settings, layout.FILES)
    full = repo.full_ids([short], timeout=settings.discard_timeout).get(short, short)
    done = {"snapshot_id": repo.retag(full, tags, timeout=settings.discard_timeout), "prepass_forgotten": True}
    if superseded:
        try:
            repo.forget(*superseded, timeout=settings.discard_timeout)
        except Exception as exc:
            log.warning("could not forget the superseded media pre-pass snapshot(s): %s", exc)
            done["prepass_forgotten"] = False
    return done


def with_prepass(summary: dict, prepass: dict | None) -> dict:
    """What the backup added is what both passes added: the pre-pass found the night's new and
    changed files, the quiesced pass the few changed since. Totals are the quiesced pass's."""
    if not prepass:
        return summary
    return {**summary, **{k: summary[k] + prepass[k] for k in ("data_added", "files_new", "files_changed")}}


def resume(job: Job, ctx: BackupContext) -> None:
    """Runs once quiesce has started, whatever failed - unless the lease was lost: then another
    job may have quiesced the app itself. It brings back only what this job holds down (the
    annotation names it, checked through the API with each scale-up, Kube.for_job); after a lost
    lease the reconciler does, at its next run, since this job no longer runs (see
    backup_chain.running_jobs). A deployment no longer held down by this job when its data steps
    are done was brought up inside the quiesced window: the backup is not one point, and fails."""
    if not ctx.quiesced or ctx.lost:
        return
    pause_point(RESUME_PAUSE)
    kube = _kube(job, ctx)
    if kube is not None and not _skip(job, ctx):
        backup_guard.check_window(job, kube, ctx.names)
    ctx.deployments = steps.scale_back(job, kube.for_job(job.task_id) if kube is not None else None, ctx.names)
    ctx.downtime_seconds = round(time.time() - ctx.down_since, 3) if ctx.names else 0.0


def _wait_for_dump(job: Job, ctx: BackupContext) -> None:
    held = join_held(job, ctx.held, "dump_db")
    if held is not None and held.result:
        ctx.results[layout.DATABASE] = held.result


def _tidy_files(settings, short: str) -> dict:
    """The quiesced pass's full id for the report (restic 0.14 prints short ones; the local cache
    has it) and every media pre-pass forgotten - this job's, and any a crashed job left: they
    were only parents - in one restic run, started as soon as the quiesced pass is done, so it
    runs while the app comes back and the dump streams. A pre-pass left behind is logged, not a
    failure (the next backup forgets it)."""
    repo = layout.repository(settings, layout.FILES)
    done = {"snapshot_id": repo.full_ids([short], timeout=settings.discard_timeout).get(short, short)}
    try:
        repo.forget_tagged(catalog.PREPASS_TAG, timeout=settings.discard_timeout)
        done["prepass_forgotten"] = True
    except Exception as exc:
        log.warning("could not forget the media pre-pass snapshot(s): %s", exc)
    return done


def _files_tidied(job: Job, ctx: BackupContext) -> None:
    held = join_held(job, ctx.held, "tidy_files")
    if held is None:
        return
    if held.error is not None:
        job.fail("finish", held.error)
    elif held.result and layout.FILES in ctx.results:  # not in the errback's (first) context
        ctx.results[layout.FILES]["snapshot_id"] = held.result["snapshot_id"]
        if held.result.get("prepass_forgotten"):
            job.report["prepass_forgotten"] = True


def _tidy_database(job: Job, results: dict) -> None:
    short = results[layout.DATABASE]["snapshot_id"]
    found = layout.repository(job.settings, layout.DATABASE).full_ids([short], timeout=job.settings.discard_timeout)
    results[layout.DATABASE]["snapshot_id"] = found.get(short, short)


def join_all(job: Job, ctx: BackupContext) -> None:
    """Waits for every step still running in this worker: the pre-pass (already joined, unless
    restic_backup never ran), the dump, the media tidy-up."""
    _prepass_joined(job, ctx)
    _wait_for_dump(job, ctx)
    _files_tidied(job, ctx)


def finish(job: Job, ctx: BackupContext) -> dict:
    """Waits for the dump, completes the report and decides what the snapshots are worth: a
    backup whose only failure is a slow resume is complete and kept (the report says what did
    not come back); any other failure forgets what carries this backup's tags, pre-pass
    included (backup_guard.forget_backup) - after a lost lease too, since nothing of another
    job's carries them. The media side has been tidied since the quiesced pass ended."""
    join_all(job, ctx)
    results = ctx.results
    resume_error = (job.report["steps"].get("resume") or {}).get("error")
    complete = set(results) == set(layout.NAMES)
    keep = not job.errors or (complete and job.errors == [resume_error])
    try:
        if keep and not ctx.lost and layout.DATABASE in results:
            _tidy_database(job, results)
    except Exception as exc:
        job.fail("finish", exc)
    report = {
        **steps.summarize(job.settings, results),
        "deployments": ctx.deployments,
        "downtime_seconds": ctx.downtime_seconds,
        "backup_complete": complete and keep,
    }
    if job.errors and keep:
        report["not_back"] = resume_error
    elif job.errors:
        backup_guard.forget_backup(job)
    job.report.update(report)
    return report


# -- the whole backup in one process ------------------------------------------------------------

# the steps in their order, by the name of their chain link (worker.jobs.backup_chain); finish
# comes last and is not among them (it makes the report)
STEPS = {"prepare": prepare, "media_prepass": media_prepass, "quiesce": quiesce, "dump_db": dump_db,
         "restic_backup": restic_backup, "resume": resume}


def start(job: Job, trigger: str) -> BackupContext:
    """The job's first facts, a fleet slot (waited for here, with the app untouched, when
    FLEET_MAX_CONCURRENT_BACKUPS caps the broker's backups), and the context the steps pass on."""
    job.report.update(backup_id=steps.new_backup_id(), trigger=trigger)
    if job.lease is not None:
        job.lease.note(backup_id=job.report["backup_id"])
    job.slot = fleet.take_slot(job)
    return BackupContext.begin(job)


def take_backup(job: Job, trigger: str) -> dict:
    """Every step in this process, in the chain's order: what the chain does, without a queue."""
    ctx = start(job, trigger)
    for step in STEPS.values():
        step(job, ctx)
    return finish(job, ctx)
