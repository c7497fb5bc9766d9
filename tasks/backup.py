"""`taiga_backup.backup`: takes the job's lease and replaces itself with the chain
prepare -> media_prepass -> quiesce -> dump_db -> restic_backup -> resume -> finish.

Replacing (Task.replace) gives the chain's last link this task's id, so whoever sent the backup
(`taiga-backup backup --wait`, `status`, a chat-ops bot) reads the final report from the same
id as before. Every link is routed to this worker process's own queue (celery_app.pinned_queue):
the database snapshot's transaction and the dump streaming it live in this process. If this worker dies,
the links wait in a queue nobody reads, the lease runs out and the reconciler resumes the app
and fails the job. The app is down only from quiesce to resume: the media was read once before
(the pre-pass), and the dump streams an exported snapshot after the app is back
(worker/jobs/backup_flow.py; the links' plumbing: worker/jobs/backup_chain.py).
"""

from __future__ import annotations

from celery import chain

from worker.celery_app import app, pinned_queue
from worker.jobs import backup_chain, backup_flow, requests
from worker.jobs.job import begin_job, end_job, record_failure, run_job


def links(ctx: dict, queue: str):
    """The links, each pinned to this worker process's own queue; the errback is not pinned
    (any worker may tidy up after a link that raised)."""
    signatures = [app.signature(name, args=(ctx,) if i == 0 else (), queue=queue)
                  for i, name in enumerate(backup_chain.ORDER)]
    canvas = chain(*signatures)
    canvas.link_error(app.signature(backup_chain.ABORT, kwargs={"ctx": ctx}))
    return canvas


@app.task(bind=True, name=requests.BACKUP)
def backup(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs `trigger` only; returns the JSON report."""
    trigger = requests.keyword_fields(requests.BACKUP, args, kwargs, {})["trigger"]
    queue = pinned_queue()
    if self.request.is_eager or queue is None:
        return run_job(self, "backup", lambda job: backup_flow.take_backup(job, trigger))
    job = begin_job(self, "backup", notify_refusal=True)
    try:
        canvas = links(backup_flow.start(job, trigger).to_json(), queue)
    except Exception as exc:
        record_failure(job, "backup", exc)
        return end_job(job)
    backup_chain.hand_over(job)  # the links renew the lease from here on
    return self.replace(canvas)
