"""Who may scale the app back up: only the job the deployments' annotation names as holding it
down now, or the reconciler once that job is gone - judged from what the Kubernetes API and the
live workers answer, never from a result key in Redis (issue 20, holes 4, 5 and 12). Real
worker processes, real Redis, PostgreSQL and restic, the Kubernetes API double."""

from __future__ import annotations

import json
import time

import pytest
from celery.result import AsyncResult

from testkit.faults import ANNOTATION, app_at_zero, app_back, snapshot_ids, wait_until
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from worker import instance
from worker.adapters.kube import ANNOTATION_HOLDER, ANNOTATION_JOB
from worker.adapters.redis_store import connect as redis_connect
from worker.jobs import steps
from worker.jobs.lease import JobLock

NAMES = list(BACKUP_DEPLOYMENTS)


def holders(site) -> dict[str, tuple[str, str, str]]:
    """(original replicas, job, holder) as each deployment's annotations say."""
    return {name: tuple(site.kube.annotations(NAMESPACE, name).get(key) for key in
                        (ANNOTATION, ANNOTATION_JOB, ANNOTATION_HOLDER)) for name in NAMES}


def test_quiescing_an_already_quiesced_deployment_names_the_new_job_and_keeps_the_count(site):
    """A job that died with the app down left its annotation; the next job to quiesce takes the
    hold over: the annotation names it (and this process), the original count survives, and a
    resume on behalf of the dead job no longer touches the app."""
    kube = steps.kube_in(site.settings())
    kube.quiesce(NAMES, 30, "dead-job")
    for name in NAMES:  # the dead job's process is gone
        site.kube.set_annotations(NAMESPACE, name, {**site.kube.annotations(NAMESPACE, name),
                                                    ANNOTATION_HOLDER: "gone-host/0"})
    recorded = kube.quiesce(NAMES, 30, "live-job")
    assert recorded == BACKUP_DEPLOYMENTS
    assert holders(site) == {name: (str(count), "live-job", instance.holder())
                             for name, count in BACKUP_DEPLOYMENTS.items()}
    assert kube.resume(NAMES, 30, expect={name: "dead-job" for name in NAMES}) == {}
    assert kube.for_job("dead-job").resume(NAMES, 30) == {}
    assert app_at_zero(site)
    assert kube.for_job("live-job").resume(NAMES, 30) == BACKUP_DEPLOYMENTS
    assert app_back(site)
