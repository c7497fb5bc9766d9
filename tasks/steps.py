"""The steps of a backup: quiesce -> dump_db -> restic_backup -> resume.

Each is a plain function of a Job so the orchestrating task (tasks.backup) can run them as one
chain with `resume` in a `finally`: a Celery errback would not run when the worker is SIGKILLed
or OOM-killed, and the app must never be left scaled down. `taiga_backup.resume` is also a task
of its own, for an operator who wants to force the app back up.
"""

from __future__ import annotations

from worker import files_restore, postgres, repositories
from worker.celery_app import app
from worker.kube import Kube

from .job import Job, run_job


def backup_tags(job: Job) -> list[str]:
    """Tags shared by the two snapshots of one backup: how restore finds a backup's partner."""
    return ["taiga-backup", f"backup-id={job.report['backup_id']}", f"kind={job.report.get('trigger', 'manual')}"]


def kube_for(job: Job) -> Kube:
    return Kube(job.settings.kube_namespace)


def quiesce(job: Job, kube: Kube | None, names: list[str]) -> dict:
    """Scales the deployments to 0 (after recording their counts on them) and waits for their pods."""
    with job.step("quiesce") as entry:
        if not names or kube is None:
            entry["skipped"] = "no deployments configured"
            return {}
        recorded = kube.quiesce(names, job.settings.quiesce_timeout, job.task_id,
                                on_progress=lambda msg: job.progress("quiesce", None, msg))
        entry["deployments"] = recorded
        return recorded


def resume(job: Job, kube: Kube | None, names: list[str]) -> dict:
    """Scales back to the recorded counts and waits for availability. Never raises: its error is
    recorded on the job (the first error of the job still wins)."""
    try:
        with job.step("resume") as entry:
            if not names or kube is None:
                entry["skipped"] = "no deployments configured"
                return {}
            restored = kube.resume(names, job.settings.resume_timeout,
                                   on_progress=lambda msg: job.progress("resume", None, msg))
            entry["deployments"] = restored
            return restored
    except Exception:
        return {}


def dump_db(job: Job, db_size: int) -> dict:
    """pg_dump streamed into `restic backup --stdin` (file name `stdin`, as the old procedure)."""
    settings = job.settings
    repo = repositories.repository(settings, repositories.DATABASE)
    with job.step("dump_db") as entry:
        def on_status(doc):
            done = int(doc.get("bytes_done") or doc.get("total_bytes") or 0)
            job.progress("dump_db", 99.0 * min(1.0, done / max(db_size, 1)), f"{done} bytes dumped")

        summary = repo.backup_pipe(postgres.dump_argv(settings), postgres.client_env(settings), backup_tags(job),
                                   on_status=on_status, timeout=settings.dump_timeout, producer_what="pg_dump")
        entry.update(snapshot_id=summary.snapshot_id, format=settings.pg_dump_format,
                     dump_bytes=summary.total_bytes_processed, data_added=summary.data_added)
        return summary.as_dict()


def restic_backup(job: Job) -> dict:
    """The media directory, backed up as `.` from inside it (the old procedure's layout)."""
    settings = job.settings
    repo = repositories.repository(settings, repositories.FILES)
    with job.step("restic_backup") as entry:
        def on_status(doc):
            pct = float(doc.get("percent_done") or 0) * 100
            job.progress("restic_backup", pct, f"{doc.get('files_done', 0)} files, {doc.get('bytes_done', 0)} bytes")

        summary = repo.backup_dir(settings.files_dir, backup_tags(job), on_status=on_status,
                                  timeout=settings.files_timeout, excludes=files_restore.BACKUP_EXCLUDES)
        entry.update(snapshot_id=summary.snapshot_id, files_new=summary.files_new,
                     files_changed=summary.files_changed, data_added=summary.data_added)
        return summary.as_dict()


@app.task(bind=True, name="taiga_backup.resume")
def resume_task(self, **kwargs):
    """Operator's lever: scale back every deployment that carries our annotation."""
    if kwargs:
        from .job import RequestInvalid
        raise RequestInvalid(f"unknown argument(s): {', '.join(sorted(map(str, kwargs)))}")

    def body(job: Job):
        names = sorted(set(job.settings.quiesce_deployments) | set(job.settings.restore_quiesce_deployments))
        kube = kube_for(job) if names else None
        return {"deployments": resume(job, kube, names)}

    return run_job(self, "resume", body)
