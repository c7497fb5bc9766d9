"""`taiga_backup.verify`: the restore drill of the latest backup (worker.jobs.verify_flow); this
module checks the request and runs it as a scheduled job."""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests
from worker.jobs.job import run_scheduled
from worker.jobs.verify_flow import verify_latest


@app.task(bind=True, name=requests.VERIFY)
def verify(self, *args, **kwargs):
    """Restore drill of the latest backup into a scratch database and directory."""
    checked = requests.keyword_fields(requests.VERIFY, args, kwargs, requests.UPKEEP_FIELDS[requests.VERIFY])
    return run_scheduled(self, "verify", checked.pop("trigger"), verify_latest)
