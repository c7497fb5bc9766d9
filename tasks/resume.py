"""`taiga_backup.resume`: the operator's lever to bring the app back up by hand.

Scales back every deployment that carries our quiesce annotation, to the count recorded there.
The reconciler does the same on its own; this is for the person who does not want to wait.
"""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests, steps
from worker.jobs.job import Job, run_job


@app.task(bind=True, name=requests.RESUME)
def resume(self, *args, **kwargs):
    requests.no_arguments(requests.RESUME, args, kwargs)

    def body(job: Job):
        names = sorted(set(job.settings.quiesce_deployments) | set(job.settings.restore_quiesce_deployments))
        kube = steps.kube_for(job) if names else None
        return {"deployments": steps.resume(job, kube, names)}

    return run_job(self, "resume", body)
