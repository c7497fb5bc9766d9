"""`taiga_backup.restore`: put a backup back - database and media - with the app stopped.

The order is chosen so that a refused or failed restore loses nothing:
request fields checked before anything else -> validate (repositories open, database privileges,
Kubernetes) -> choose -> stage_files (restic restore next to the live media, the app still up)
-> quiesce (every user of the database and media) -> safety_backup (the current state, tagged
pre-restore) -> database (terminate, drop, recreate with its owner, load) -> files (swap the
staged files in) -> resume, in a `finally`, whatever failed.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from worker.adapters.restic import Repository, ResticError
from worker.backups import catalog, database, layout, media, selection
from worker.backups.selection import SelectionError
from worker.celery_app import app
from worker.errors import JobFailed
from worker.jobs import requests, steps
from worker.jobs.job import Job, run_job
from worker.jobs.requests import RestoreRequest


def _open(repo: Repository) -> None:
    """`restic unlock` (stale locks only) also proves the repository is there and the password opens it."""
    try:
        repo.unlock_stale()
    except ResticError as exc:
        if exc.kind == "no-repository":
            raise JobFailed(f"repository {repo.name} does not exist at {repo.url}") from None
        if exc.kind == "wrong-password":
            raise JobFailed(f"the password in RESTIC_PASSWORD_FILE does not open repository {repo.name} "
                            f"at {repo.url}") from None
        raise


def _each(repos: dict, fn) -> dict:
    """fn on both repositories at once: every restic call pays a process start and a key derivation."""
    with ThreadPoolExecutor(max_workers=len(repos), thread_name_prefix="restore-repo") as pool:
        futures = {name: pool.submit(fn, repo) for name, repo in repos.items()}
        return {name: future.result() for name, future in futures.items()}


def validate(job: Job) -> tuple:
    """Everything that can be checked without touching anything."""
    settings = job.settings
    with job.step("validate") as entry:
        media.check_target(settings.files_dir)
        repos = layout.both(settings)
        _each(repos, _open)
        target = database.inspect(settings)
        names = list(settings.restore_quiesce_deployments)
        kube = steps.kube_for(job) if names else None
        if kube:
            kube.preflight(names)
        entry.update(database_exists=target.exists, database_owner=target.owner, deployments=names)
    return repos, target, kube, names


def choose(job: Job, request: RestoreRequest, repos: dict) -> tuple:
    with job.step("choose") as entry:
        listed = _each(repos, lambda repo: repo.snapshots())
        backups = catalog.pair(listed[layout.FILES], listed[layout.DATABASE])
        try:
            chosen = selection.choose(backups, request.snapshot, request.before)
        except SelectionError as exc:
            raise JobFailed(str(exc)) from None
        facts = {"backup_id": chosen.id, "snapshots": chosen.snapshot_ids(),
                 "backup_time": selection.stamp(chosen.time), "backup_kind": chosen.kind}
        job.report.update(facts)
        entry.update(facts)
    return chosen, backups


def unique_backup_id(taken: set) -> str:
    """Backup ids have one-second resolution: never reuse one (tags pair snapshots by it)."""
    while (backup_id := steps.new_backup_id()) in taken:
        time.sleep(0.25)
    return backup_id


def safety_backup(job: Job, target: database.Target, backups: list) -> dict | None:
    """A backup of the state about to be replaced, so a wrong restore can be undone by restoring
    it by id. Runs while the app is already quiesced (with the restore's wider list)."""
    with job.step("safety_backup") as entry:
        if not target.exists:
            entry["skipped"] = f"database {target.name} does not exist: nothing to protect"
            return None
        child = Job("backup", job.settings)
        child.report.update(backup_id=unique_backup_id({b.id for b in backups}), trigger=selection.PRE_RESTORE)
        summary = steps.summarize(job.settings, steps.backup_quiesced(child, target.size_bytes))
        entry["steps"] = child.report["steps"]
        if child.errors:
            steps.discard(child, summary["snapshots"])
            raise JobFailed(child.errors[0])
        made = {"backup_id": child.report["backup_id"], "snapshots": summary["snapshots"],
                "bytes_added": summary["bytes_added"]["total"]}
        entry.update(made)
        return made


def restore_backup(job: Job, request: RestoreRequest) -> dict:
    """The chain; the report is filled in as it goes, so a failure report shows how far it got."""
    settings = job.settings
    job.report.update(request=request.as_dict(), trigger=request.trigger, backup_id=None, snapshots=None,
                      safety_backup=None, database=None, files=None, deployments={}, downtime_seconds=0.0)
    repos, target, kube, names = validate(job)
    chosen, backups = choose(job, request, repos)
    ids = media.owner(settings.restore_chown)
    staged = None
    try:
        with job.step("stage_files") as entry:
            staged = media.stage(repos[layout.FILES], chosen.files, settings.files_dir, ids,
                                         timeout=settings.restore_timeout)
            entry.update(count=staged.count, bytes=staged.bytes)
        down_since = time.monotonic()
        try:
            steps.quiesce(job, kube, names)
            if request.safety_backup:
                job.report["safety_backup"] = safety_backup(job, target, backups)
            with job.step("database") as entry:
                job.progress("database", 5.0, f"terminating sessions and dropping {target.name}", force=True)
                job.report["database"] = database.replace(
                    settings, target, repos[layout.DATABASE], chosen.database["id"],
                    on_progress=lambda pct, msg: job.progress("database", pct, msg, force=True))
                entry.update(job.report["database"])
            with job.step("files") as entry:
                warnings = media.swap(staged, ids)
                job.report["files"] = {"count": staged.count, "bytes": staged.bytes,
                                       "chown": settings.restore_chown if ids else None}
                entry.update(job.report["files"], warnings=warnings)
        finally:
            job.report["deployments"] = steps.resume(job, kube, names)
            job.report["downtime_seconds"] = round(time.monotonic() - down_since, 3) if names else 0.0
    finally:
        if staged is not None:
            staged.discard()
    return {}


@app.task(bind=True, name=requests.RESTORE)
def restore(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs snapshot | before, safety_backup, trigger; returns
    the JSON report (docs/chatops.md). Validation first: a refused request touches nothing, not
    even the job lease."""
    request = requests.restore_request(args, kwargs)
    return run_job(self, "restore", lambda job: restore_backup(job, request))
