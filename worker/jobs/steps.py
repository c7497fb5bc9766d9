"""The steps every job is made of: scale the app down and back (scale_down, scale_back), the two
halves of a backup (stream_dump, backup_media) and what a failed backup must undo (discard).

Plain functions of a Job, with no Celery in them: the backup chain's links (worker.jobs.backup_flow,
whose steps are named after the links: quiesce, dump_db, restic_backup, resume), the restore's
safety backup and the reconciler all use them. `scale_back` never raises: the app must come back
whatever failed before it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from worker.adapters import metrics, postgres
from worker.adapters.kube import Kube
from worker.adapters.process import ProcessError
from worker.adapters.restic import ResticError
from worker.backups import catalog, layout, media
from worker.jobs.job import Job
from worker.pause_points import pause_point
from worker.settings import Settings

log = logging.getLogger("taiga_backup.steps")


def backup_tags(job: Job) -> list[str]:
    """The tags of this job's backup (catalog.backup_tags)."""
    return catalog.backup_tags(job.report["backup_id"], job.report.get("trigger", "manual"),
                               job.report.get("consistency_point"))


def point_of(job: Job) -> datetime | None:
    """The backup's consistency point, once dump_db has exported it: the time of the snapshots
    made after it (restic's --time), so restic's own listing agrees with ours."""
    point = job.report.get("consistency_point")
    return catalog.point_time(point) if point else None


def kube_in(settings: Settings) -> Kube:
    """The Kubernetes client for the configured namespace: a job's, or the reconciler's (which
    runs no Job)."""
    return Kube(settings.kube_namespace)


def kube_for(job: Job) -> Kube:
    return kube_in(job.settings)


def scale_down(job: Job, kube: Kube | None, names: list[str]) -> dict:
    """Scales the deployments to 0 (after recording their counts on them) and waits for their pods."""
    with job.step("quiesce") as entry:
        if not names or kube is None:
            entry["skipped"] = "no deployments configured"
            return {}
        metrics.quiesced({name: True for name in names})  # annotated as each is scaled down
        recorded = kube.quiesce(names, job.settings.quiesce_timeout, job.task_id,
                                on_progress=lambda msg: job.progress("quiesce", None, msg))
        entry["deployments"] = recorded
        return recorded


def scale_back(job: Job, kube: Kube | None, names: list[str]) -> dict:
    """Scales back to the recorded counts and waits for availability. Never raises: its error is
    recorded on the job (the first error of the job still wins)."""
    try:
        with job.step("resume") as entry:
            if not names or kube is None:
                entry["skipped"] = "no deployments configured"
                return {}
            try:
                restored = kube.resume(names, job.settings.resume_timeout,
                                       on_progress=lambda msg: job.progress("resume", None, msg))
            finally:
                refresh_quiesced(kube, names)
            entry["deployments"] = restored
            return restored
    except Exception:
        return {}


def refresh_quiesced(kube: Kube, names: list[str]) -> None:
    """The quiesced-deployments metric, from the annotations themselves (best effort: a metric
    never fails a step)."""
    try:
        down = kube.recorded(names)
        metrics.quiesced({name: name in down for name in names})
    except Exception as exc:
        log.warning("could not refresh the quiesced-deployments metric: %s", exc)


def stream_dump(job: Job, db_size: int, dbname: str | None = None, snapshot: str | None = None,
            full_id: bool = True, nice: int | None = None) -> dict:
    """pg_dump streamed into `restic backup --stdin` (file name `stdin`, as the old procedure).
    `dbname`: another database than POSTGRES_DB (a restore's kept previous state). `snapshot`:
    an exported snapshot to dump (postgres.ExportedSnapshot) instead of a fresh one. `nice`: the
    dump runs beside work that must keep the CPU (the quiesced media pass)."""
    settings = job.settings
    repo = layout.repository(settings, layout.DATABASE)
    with job.step("dump_db") as entry:
        def on_status(doc):
            done = int(doc.get("bytes_done") or doc.get("total_bytes") or 0)
            job.progress("dump_db", 99.0 * min(1.0, done / max(db_size, 1)), f"{done} bytes dumped")

        summary = repo.backup_pipe(postgres.dump_argv(settings, dbname=dbname, snapshot=snapshot),
                                   postgres.client_env(settings), backup_tags(job), on_status=on_status,
                                   timeout=settings.dump_timeout, producer_what="pg_dump", full_id=full_id,
                                   flags=layout.BACKUP_FLAGS[layout.DATABASE], nice=nice, at=point_of(job))
        entry.update(snapshot_id=summary.snapshot_id, format=settings.pg_dump_format,
                     dump_bytes=summary.total_bytes_processed, data_added=summary.data_added)
        return summary.as_dict()


def backup_media(job: Job, files_dir: str | None = None, *, step: str = "restic_backup",
                 tags: list[str] | None = None, parent: str | None = None, full_id: bool = True,
                 make_ready=None, pause: str | None = None, watch=None) -> dict:
    """The media directory, backed up as `.` from inside it (the old procedure's layout), so a
    snapshot of another directory (a restore's kept previous media) has the same paths.
    `parent`: a pre-pass made a moment ago with the app up, so this pass reads only what changed.
    `make_ready(repo, error)`: called when restic cannot open or lock the repository; True when
    it made it usable (created it, removed a dead worker's lock), and the backup is tried again -
    so no separate restic run checks the repository first. `pause`: a test-only pause point
    (worker.pause_points) before restic starts. `watch(status)`: also sees every status line
    (the backup chain's estimate of the pre-pass's end, worker.backups.backup_eta)."""
    settings = job.settings
    repo = layout.repository(settings, layout.FILES)
    with job.step(step) as entry:
        if pause:
            pause_point(pause)
        def on_status(doc):
            pct = float(doc.get("percent_done") or 0) * 100
            job.progress(step, pct, f"{doc.get('files_done', 0)} files, {doc.get('bytes_done', 0)} bytes")
            if watch is not None:
                watch(doc)

        def attempt():
            return repo.backup_dir(files_dir or settings.files_dir, tags or backup_tags(job), on_status=on_status,
                                   timeout=settings.files_timeout, parent=parent,
                                   excludes=media.backup_excludes(files_dir or settings.files_dir),
                                   full_id=full_id, flags=layout.BACKUP_FLAGS[layout.FILES], at=point_of(job))

        try:
            summary = attempt()
        except ResticError as exc:
            if make_ready is None or not make_ready(repo, exc, entry):
                raise
            summary = attempt()
        entry.update(snapshot_id=summary.snapshot_id, files_new=summary.files_new,
                     files_changed=summary.files_changed, data_added=summary.data_added)
        return summary.as_dict()


def new_backup_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup_quiesced(job: Job, db_size: int, dbname: str | None = None, files_dir: str | None = None,
                    parent: str | None = None, pause: str | None = None) -> dict:
    """dump_db and restic_backup, with the app already down; their results by repository (a
    failed one is missing and recorded on the job). Shared with restore's safety backup, which
    has quiesced a wider set of deployments itself. Tags come from job.report (backup_id, trigger).
    `parent`: a media snapshot of (nearly) the same files, so restic reads only what changed.
    `pause`: the media half's test-only pause point."""
    work = {
        layout.DATABASE: lambda: stream_dump(job, db_size, dbname),
        layout.FILES: lambda: backup_media(job, files_dir, parent=parent, pause=pause),
    }
    if job.settings.parallel_backup:
        return job.in_parallel(work)
    results: dict = {}
    for name, fn in work.items():
        try:
            results[name] = fn()
        except Exception:
            break  # recorded on the job by its step; resume still runs
    return results


def summarize(settings, results: dict) -> dict:
    """The report fields describing the snapshots a backup made."""
    return {
        "snapshots": {name: r["snapshot_id"] for name, r in results.items()},
        "bytes_added": {**{name: r["data_added"] for name, r in results.items()},
                        "total": sum(r["data_added"] for r in results.values())},
        "files": {k: results[layout.FILES][k] for k in ("files_new", "files_changed", "files_unmodified",
                                                          "total_files_processed", "total_bytes_processed")}
        if layout.FILES in results else None,
        "database": {"format": settings.pg_dump_format,
                     "dump_bytes": results[layout.DATABASE]["total_bytes_processed"]}
        if layout.DATABASE in results else None,
    }



def discard(job: Job, snapshots: dict) -> None:
    """A failed backup leaves no snapshot behind: half a backup must never become `latest`.
    A repository's value may be one id or several (forgotten in one restic run)."""
    for name, ids in snapshots.items():
        ids = [ids] if isinstance(ids, str) else [i for i in ids if i]
        if not ids:
            continue
        repo = layout.repository(job.settings, name)
        try:
            try:
                repo.forget(*ids, timeout=job.settings.discard_timeout)
            except ResticError as exc:
                if exc.kind != "locked":
                    raise
                # a restic of this job killed at its deadline left its lock: stale (dead PID, this
                # host), so `unlock` removes it - and only such locks
                repo.unlock_stale(timeout=job.settings.discard_timeout)
                repo.forget(*ids, timeout=job.settings.discard_timeout)
            job.report.setdefault("discarded_snapshots", {})[name] = ids[0] if len(ids) == 1 else ids
        except ProcessError as exc:
            job.fail("discard", exc)
