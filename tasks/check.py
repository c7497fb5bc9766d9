"""`taiga_backup.check`: `restic check` of both repositories, structure plus a rotating slice of
the data (worker.jobs.check_flow); this module checks the request and runs it as a scheduled job."""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests
from worker.jobs.check_flow import check_repositories
from worker.jobs.job import run_scheduled


@app.task(bind=True, name=requests.CHECK)
def check(self, *args, **kwargs):
    """kwargs: read_data_subset (n/t, x% or a size), trigger."""
    checked = requests.keyword_fields(requests.CHECK, args, kwargs, requests.UPKEEP_FIELDS[requests.CHECK])
    trigger = checked.pop("trigger")
    return run_scheduled(self, "check", trigger, lambda job: check_repositories(job, **checked))
