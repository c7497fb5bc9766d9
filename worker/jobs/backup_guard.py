"""What keeps a failed or broken backup from being taken for a good one, shared by the chain's
steps (worker.jobs.backup_flow) and its errback (worker.jobs.backup_chain): the check that the app
stayed down for the whole quiesced window, and forgetting what a failed backup made by its tags.

Why by tags, not by the ids the job learned: a `restic tag` that saved the new snapshot but was
killed before it removed the old, or a truncated dump whose own forget failed, leaves snapshots
the job never heard of - with this backup's tags, where the old procedure takes `latest` from.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from worker.backups import catalog, layout
from worker.errors import OperatorError
from worker.jobs import steps
from worker.jobs.job import Job

log = logging.getLogger("taiga_backup.backup")

# the steps that start a restic backup: a backup that never ran one made no snapshot
MAKERS = frozenset({"media_prepass", "media_catchup", "dump_db", "restic_backup"})
# the backup's first step (prepare's): a report that holds it knows every step the job ran
FIRST_STEP = "preflight"


def check_window(job: Job, kube, names: list[str]) -> None:
    """Every deployment is still held down by this job (its annotation names it) when the data
    steps are done; one that is not was brought up inside the quiesced window (by hand, or by
    a reconciler misled), and the backup would not be one point in time: the job fails."""
    try:
        held = kube.holders(names)
    except Exception as exc:
        job.fail("quiesced_window", exc)
        return
    up = sorted(name for name in names if (held.get(name) or {}).get("job") != job.task_id)
    if up:
        job.fail("quiesced_window", OperatorError(
            f"{', '.join(up)} no longer held down by this backup before its snapshots were done (scaled up "
            f"or quiesced by someone else): the backup would not be one point in time"))
    elif job.lease is not None:
        _note_window_held(job)


def _note_window_held(job: Job) -> None:
    """The lease record says the window was checked whole, so that a crash from here on keeps
    the complete pair: once the app is back up, the reconciler cannot tell
    (reconcile_flow.window_whole). A note that cannot be written costs only that pair, after a crash."""
    try:
        job.lease.note(window_held=True)
    except Exception as exc:
        log.warning("could not record the checked window in the lease record: %s", exc)


def forget_backup(job: Job) -> None:
    """Everything this backup made, found by its own tags in both repositories - the backup's
    `backup-id=` and its pre-pass's `prepass-of=` - and forgotten (finish and the chain's
    errback both): not only the snapshots whose ids the job learned, but one a `restic tag`
    saved without removing the old, or a truncated dump whose own forget failed, which would
    else be the old procedure's `latest`. Only snapshots tagged with this backup's id: after a
    lost lease too, another job's are never touched. A backup that never started a restic
    backup (it failed in prepare) made nothing, and its repositories are not asked (they may be
    the very thing that did not answer) - as long as the report holds the job's first step. One
    that does not is no proof: the errback's (its context is from before the first link) holds
    only the resume the errback did itself, and so does a report lost with a Redis restart: the
    repositories are asked."""
    backup_id = job.report.get("backup_id")
    known = set(job.report.get("steps") or {})
    if not backup_id or (FIRST_STEP in known and not MAKERS & known):
        return
    ours = {catalog.ID_TAG + backup_id, catalog.PREPASS_OF_TAG + backup_id}

    def tagged(repo) -> list[str]:
        return [s["id"] for s in repo.snapshots(timeout=job.settings.discard_timeout) if ours & set(s.get("tags") or [])]

    repos = layout.both(job.settings)
    made: dict = {}
    with ThreadPoolExecutor(max_workers=len(repos), thread_name_prefix="forget-backup") as pool:
        listed = {name: pool.submit(tagged, repo) for name, repo in repos.items()}  # both at once: each may wait
        for name, future in listed.items():
            try:
                made[name] = future.result()
            except Exception as exc:
                job.fail("discard", exc)
    steps.discard(job, made)
