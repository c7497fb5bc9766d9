"""`taiga_backup.prune`: the retention policy applied to both repositories
(worker.jobs.prune_flow); this module checks the request and runs it as a scheduled job."""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests
from worker.jobs.job import run_scheduled
from worker.jobs.prune_flow import prune_repositories


@app.task(bind=True, name=requests.PRUNE)
def prune(self, *args, **kwargs):
    """kwargs: dry_run (bool), trigger."""
    checked = requests.keyword_fields(requests.PRUNE, args, kwargs, requests.UPKEEP_FIELDS[requests.PRUNE])
    trigger = checked.pop("trigger")
    return run_scheduled(self, "prune", trigger, lambda job: prune_repositories(job, **checked))
