"""`taiga_backup.resume`: the operator's lever to bring the app back up by hand.

Scales back every deployment that carries our quiesce annotation, to the count recorded there.
The reconciler does the same on its own; this is for the person who does not want to wait.
The backup chain uses this same task as its resume link (with the chain's context).
"""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import backup_chain, requests, steps
from worker.jobs.job import Job, run_job


@app.task(bind=True, name=requests.RESUME)
def resume(self, *args, **kwargs):
    """With no arguments: the operator's lever. With a backup chain's context: that chain's
    resume link (the same task, so Flower shows `taiga_backup.resume` in every backup)."""
    if backup_chain.is_context(args, kwargs):
        return backup_chain.run_link(self, args[0], requests.RESUME)
    requests.no_arguments(requests.RESUME, args, kwargs)

    def body(job: Job):
        names = job.settings.all_quiesced_deployments
        kube = steps.kube_for(job) if names else None
        return {"deployments": steps.scale_back(job, kube, names)}

    return run_job(self, "resume", body)
