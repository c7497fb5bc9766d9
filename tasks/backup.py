"""`taiga_backup.backup`: takes the job's lease and replaces itself with the chain
prepare -> media_prepass -> quiesce -> dump_db -> restic_backup -> resume -> finish.

Replacing (Task.replace) gives the chain's last link this task's id, so whoever sent the backup
(`taiga-backup backup --wait`, `status`, a chat-ops bot) reads the final report from the same
id as before. Every link is routed to this worker process's own queue (celery_app.pinned_queue):
the database snapshot's transaction and the dump streaming it live in this process. If this worker dies,
the links wait in a queue nobody reads, the lease runs out and the reconciler resumes the app
and fails the job. The app is down only from quiesce to resume: the media was read once before
(the pre-pass), and the dump streams an exported snapshot after the app is back
(worker/jobs/backup_flow.py).
"""

from __future__ import annotations

from celery import chain

from worker.celery_app import app, pinned_queue
from worker.jobs import backup_flow, requests
from worker.jobs.job import begin_job, end_job, record_failure, run_job

take_backup = backup_flow.take_backup  # the same steps in this process, without the queue


def backup_chain(ctx: dict, queue: str):
    """The links, each pinned to this worker process's own queue; the errback is not pinned
    (any worker may tidy up after a link that raised)."""
    names = [*backup_flow.LINKS, backup_flow.FINISH]
    links = [app.signature(name, args=(ctx,) if i == 0 else (), queue=queue) for i, name in enumerate(names)]
    canvas = chain(*links)
    canvas.link_error(app.signature(backup_flow.ABORT, kwargs={"ctx": ctx}))
    return canvas


@app.task(bind=True, name=requests.BACKUP)
def backup(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs `trigger` only; returns the JSON report."""
    trigger = requests.keyword_fields(requests.BACKUP, args, kwargs, {})["trigger"]
    queue = pinned_queue()
    if self.request.is_eager or queue is None:
        return run_job(self, "backup", lambda job: take_backup(job, trigger))
    job = begin_job(self, "backup", notify_refusal=True)
    try:
        ctx = backup_flow.start(job, trigger)
        ctx["lease"] = job.lease.value
        canvas = backup_chain(ctx, queue)
    except Exception as exc:
        record_failure(job, "backup", exc)
        return end_job(job)
    backup_flow.hand_over(job)  # the links renew the lease from here on
    return self.replace(canvas)
