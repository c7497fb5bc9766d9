"""`taiga_backup.change_password`: both repositories moved to RESTIC_NEW_PASSWORD_FILE
(worker.jobs.password_flow); this module checks the request and runs it as a scheduled job."""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests
from worker.jobs.job import run_scheduled
from worker.jobs.password_flow import rotate


@app.task(bind=True, name=requests.CHANGE_PASSWORD)
def change_password(self, *args, **kwargs):
    checked = requests.keyword_fields(requests.CHANGE_PASSWORD, args, kwargs, {})
    return run_scheduled(self, "change_password", checked["trigger"], rotate)
