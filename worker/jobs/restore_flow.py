"""The restore (`taiga_backup.restore` runs it): a backup put back - database and media - with
the app down only for renames.

The order is chosen so that a refused or failed restore loses nothing, and the downtime does
not grow with the data:
request fields checked before anything else -> validate (media directory, database
privileges, Kubernetes) -> choose (which also opens the repositories) -> plan (sizes; a dry run
stops here; stale restic locks removed meanwhile) -> settle (what a dead job left) -> with the
app UP: load the dump into `<db>__restore_<id>` (committed only when whole) and stage the media
beside the live ones -> quiesce -> switch (renames, journaled: worker.backups.switch) -> resume,
in a `finally`, while the safety backup of the kept previous state starts beside it (that state
is whole and unseen from the switch on) -> older kept states removed. A failure before the
switch removes the side copies and leaves the live data as it was.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from worker.adapters import databases
from worker.adapters.restic import Repository, ResticError
from worker.backups import catalog, dump_loader, layout, media, selection, switch
from worker.backups.selection import SelectionError
from worker.errors import JobFailed
from worker.jobs import restore_steps, safety_flow
from worker.jobs.job import Job
from worker.jobs.requests import RestoreRequest


def _listed(repo: Repository) -> list[dict]:
    """The repository's snapshots: the first restic run of a restore, so it also says when the
    repository is missing or the password does not open it."""
    try:
        return repo.snapshots()
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
    """Everything that can be checked without touching anything; the repositories are opened by
    `choose`'s listing (one restic run each, not two)."""
    with job.step("validate") as entry:
        media.check_target(job.settings.files_dir)
        repos = layout.both(job.settings)
        target, kube, names = restore_steps.check_environment(job, entry, for_what="a restore")
    return repos, target, kube, names


def choose(job: Job, request: RestoreRequest, repos: dict) -> tuple:
    with job.step("choose") as entry:
        listed = _each(repos, _listed)
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


def unique_restore_id(settings) -> str:
    """Restore ids are the start second: never one whose kept state still exists."""
    taken = {k["id"] for k in switch.kept_states(settings)}
    while (rid := switch.new_id()) in taken:
        time.sleep(0.25)
    return rid


def plan(job: Job, chosen: catalog.Backup, repos: dict, target: databases.Target) -> dict:
    """What the restore would do, with the sizes it needs: the dry run's answer, and the space
    check made before anything is written."""
    settings = job.settings
    with job.step("plan") as entry:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-plan") as pool:
            # from the snapshots' own summaries when restic recorded them: no restic run at all
            files = pool.submit(media.snapshot_size, repos[layout.FILES], chosen.files)
            dump = pool.submit(media.snapshot_size, repos[layout.DATABASE], chosen.database)
            sizes = {layout.FILES: files.result(), layout.DATABASE: {"dump_bytes": dump.result()["bytes"]}}
        free = media.free_bytes(settings.files_dir)
        db_bytes = max(sizes[layout.DATABASE]["dump_bytes"], target.size_bytes)
        db_free, db_where = databases.free_bytes(settings, target)
        expires = datetime.now(timezone.utc) + timedelta(seconds=settings.restore_keep_previous)
        found = {
            "backup": {"backup_id": chosen.id, "time": selection.stamp(chosen.time), "kind": chosen.kind,
                       "snapshots": chosen.snapshot_ids(), "dump_bytes": sizes[layout.DATABASE]["dump_bytes"],
                       "files": sizes[layout.FILES]},
            "would_keep": {
                "database": target.name if target.exists else None,
                "database_bytes": target.size_bytes, "files": media.tree_size(settings.files_dir),
                "kept_as": {"database": switch.before_db(settings, "<id>") if target.exists else None,
                            "files_dir": switch.kept_dir(settings, "<id>")},
                "until": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "would_remove": switch.replaceable(settings),
            "space_needed": {
                "database_bytes": db_bytes,
                "database_note": f"free on the PostgreSQL server beside {target.name} (about the dump's size plus "
                                 "its indexes; the live database stays until the switch)",
                "database_free_bytes": db_free, "database_free_where": db_where,
                "database_margin_bytes": databases.load_margin(db_bytes),
                "media_bytes": sizes[layout.FILES]["bytes"], "media_free_bytes": free,
                "media_margin_bytes": media.staging_margin(sizes[layout.FILES]["bytes"])},
        }
        entry.update(space_needed=found["space_needed"])
        return found


def _prepare(job: Job, chosen: catalog.Backup, repos: dict, target: databases.Target, rid: str, ids) -> dict:
    """With the app up: the side database loaded and the media staged, both at once. On any
    failure both side copies are removed; the live data were never touched."""
    settings = job.settings
    side = switch.side_db(settings, rid)

    def load() -> dict:
        with job.step("load_database") as entry:
            databases.create_like(settings, target, side)
            try:
                fmt = dump_loader.load(settings, repos[layout.DATABASE], chosen.database["id"], side,
                                    timeout=settings.restore_timeout, pause="load")
            except Exception as exc:
                if dump_loader.out_of_space(exc):
                    raise JobFailed(f"the PostgreSQL server ran out of disk space loading the backup beside "
                                    f"{target.name}: a restore needs about "
                                    f"{job.report['plan']['space_needed']['database_bytes']} bytes free there "
                                    "while the live database stays (the live data are untouched)") from None
                raise
            entry.update(format=fmt, side_database=side)
            return {"format": fmt}

    def stage() -> media.Staged:
        with job.step("stage_files") as entry:
            staged = media.stage(repos[layout.FILES], chosen.files, settings.files_dir, ids,
                                 timeout=settings.restore_timeout, name=media.STAGING_PREFIX + rid)
            entry.update(count=staged.count, bytes=staged.bytes)
            return staged

    done = job.in_parallel({"database": load, "files": stage})
    if len(done) < 2:
        switch.discard(settings, rid)
        raise JobFailed(job.errors[0] if job.errors else "preparing the restore failed")
    return done


def restore_backup(job: Job, request: RestoreRequest, live: switch.LiveHolders,
                   send_safety: safety_flow.Send | None = None) -> dict:
    """The chain; the report is filled in as it goes, so a failure report shows how far it got.
    `live()`: the worker processes alive now (the task asks Celery), so that what a dead job
    left is settled and what a running one holds is not. `send_safety`: queues the safety
    backup as a job of its own, which the restore hands its lease to once it has answered
    (worker.jobs.safety_flow); without it (one process) the safety backup is made inline, beside
    the resume."""
    settings = job.settings
    job.report.update(request=request.as_dict(), trigger=request.trigger, backup_id=None, snapshots=None,
                      safety_backup=None, database=None, files=None, deployments={}, downtime_seconds=0.0,
                      dry_run=request.dry_run)
    repos, target, kube, names = validate(job)
    chosen, backups = choose(job, request, repos)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-unlock") as pool:
        # stale locks (a killed restic's) would stop `restic dump` / `restore`: removed while the
        # plan is made - not in a dry run, which changes nothing
        unlocked = [] if request.dry_run else [pool.submit(repo.unlock_stale) for repo in repos.values()]
        job.report["plan"] = plan(job, chosen, repos, target)
        for future in unlocked:
            future.result()
    if request.dry_run:
        return {}
    space = job.report["plan"]["space_needed"]
    if space["media_bytes"] + space["media_margin_bytes"] > space["media_free_bytes"]:
        raise JobFailed(f"the media volume {settings.files_dir} has {space['media_free_bytes']} bytes free; staging "
                        f"the backup's files beside the live ones needs {space['media_bytes']} and leaves "
                        f"{space['media_margin_bytes']} free for the app and the switch (nothing was changed)")
    if space["database_free_bytes"] is not None and \
            space["database_bytes"] + space["database_margin_bytes"] > space["database_free_bytes"]:
        raise JobFailed(f"the PostgreSQL server has {space['database_free_bytes']} bytes free at "
                        f"{space['database_free_where']}; loading the backup beside {target.name} needs about "
                        f"{space['database_bytes']} and leaves {space['database_margin_bytes']} free for the live "
                        "database (nothing was changed)")
    restore_steps.settle_first(job, live)
    ids = media.owner(settings.restore_chown)
    rid = unique_restore_id(settings)
    job.report["restore_id"] = rid
    switch.claim(settings, rid)
    done = _prepare(job, chosen, repos, target, rid, ids)
    staged = done["files"]
    switched, safety, owed = False, None, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety-backup") as pool:
        try:
            def do_switch() -> dict:
                nonlocal switched, safety, owed
                out = switch.forward(settings, rid, staged.source, target.exists, ids)
                switched = True
                if request.safety_backup and send_safety is None:
                    # the kept state is whole and nobody else sees it: its backup starts now,
                    # while the resume waits for the pods
                    safety = pool.submit(safety_flow.inline, job, target, backups, rid)
                elif request.safety_backup:  # owed from now on, whatever happens to this job
                    owed = safety_flow.owe(job, target, backups, rid)
                return out

            moved = restore_steps.down_for(job, kube, names, do_switch)
        finally:
            if not switched:
                switch.discard(settings, rid)
        _report_switch(job, target, done, staged, moved, ids)
        switch.release(settings, rid)
        job.report["kept"] = next((k for k in switch.kept_states(settings) if k["id"] == rid), None)
        if safety is not None:
            job.report["safety_backup"] = safety.result()
    with job.step("cleanup") as entry:
        entry["removed_kept"] = [switch.remove_kept(settings, k["id"])["id"]
                                 for k in switch.replaceable(settings) if k["id"] != rid]
    if request.safety_backup and send_safety is not None:
        # the report is complete and the app up: the lease goes to the safety backup
        job.report["safety_backup"] = safety_flow.hand_over(job, target, rid, owed, send_safety)
    return {}


def _report_switch(job: Job, target: databases.Target, done: dict, staged: media.Staged, moved: dict, ids) -> None:
    settings = job.settings
    job.report["database"] = {"name": target.name, "owner": target.owner, "format": done["database"]["format"],
                              "existed": target.exists, "sessions_terminated": moved["sessions_terminated"],
                              "previous_database": moved["previous_database"]}
    job.report["files"] = {"count": staged.count, "bytes": staged.bytes,
                           "chown": settings.restore_chown if ids else None, "kept_dir": moved["kept_files"]}
