"""The restore's safety backup as a job of its own, in this process, on real PostgreSQL, restic,
Redis and the Kubernetes API double: the restore answers with the app up and its lease handed to
the safety backup; a safety backup that fails (its repository gone, for real) alerts - the
webhook and the metric - and keeps the kept state past RESTORE_KEEP_PREVIOUS until a retry makes
it or an operator gives up on it. (The same through a real worker, SIGKILLed mid-way:
tests/worker/test_restore_crash.py.)"""

from __future__ import annotations

import redis
import pytest
from prometheus_client import REGISTRY

from testkit.endpoints import Endpoint
from testkit.restore_checks import kept_state, live_state
from testkit.scenarios import (ALL_DEPLOYMENTS, change_everything, run_backup, run_restore_answering,
                               run_safety_backup, snapshots)
from worker.backups import switch
from worker.errors import JobFailed
from worker.jobs.lease import JobLock


def pre_restore(site, repo: str) -> list[str]:
    return [s["id"] for s in snapshots(site, repo) if "kind=pre-restore" in (s.get("tags") or [])]


def test_a_failed_safety_backup_alerts_and_keeps_the_kept_state_until_a_retry_or_a_give_up(repos, monkeypatch):
    site = repos
    endpoint = Endpoint()
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", f"{endpoint.url}/hook")
    try:
        made = run_backup()
        change_everything(site)
        changed = live_state(site)

        restored, safety = run_restore_answering()
        rid, queued = restored["restore_id"], restored["safety_backup"]
        assert restored["state"] == "SUCCESS" and queued["state"] == "QUEUED" and site.replicas() == ALL_DEPLOYMENTS
        assert restored["kept"]["safety_backup_owed"]["state"] == "queued" and restored["kept"]["expires_at"] is None
        lock = JobLock(redis.Redis.from_url(site.env["CELERY_BROKER_URL"]), site.settings().restic_repository)
        holder, active = lock.holder(), lock.active()
        assert (holder["kind"], holder["task_id"]) == ("safety_backup", queued["task_id"])  # handed over, not freed
        assert (active["task_id"], active["backup_id"]) == (queued["task_id"], queued["backup_id"])

        (site.repo / "files").rename(site.repo / "files-away")  # the repository gone under the safety backup
        try:
            with pytest.raises(JobFailed, match=rf"the safety backup of the state restore {rid} replaced failed"):
                safety()
        finally:
            (site.repo / "files-away").rename(site.repo / "files")
        [hook] = [body for body in endpoint.json_bodies("/hook") if body["job"] == "safety_backup"]
        assert hook["state"] == "FAILURE" and hook["task_id"] == queued["task_id"] and "replaced failed" in hook["error"]
        assert REGISTRY.get_sample_value("taiga_backup_last_run_success", {"kind": "safety_backup"}) == 0
        assert lock.holder() is None  # the failed job let its lease go
        assert pre_restore(site, "files") == pre_restore(site, "pg-database") == []  # its half was forgotten

        expired_at_once = site.settings(RESTORE_KEEP_PREVIOUS="0")
        assert switch.expire(expired_at_once) == []  # owed: kept past RESTORE_KEEP_PREVIOUS
        [kept] = switch.kept_states(expired_at_once)
        assert kept["id"] == rid and kept["expires_at"] is None and kept["safety_backup_owed"]["state"] == "failed"
        assert kept_state(site, rid)["db"] == changed["db"]

        again = run_safety_backup(rid)  # the operator's retry: the lease taken as any job takes it
        assert again["state"] == "SUCCESS" and again["restore_id"] == rid and again["backup_id"] != made["backup_id"]
        assert sorted(again["snapshots"].values()) == sorted(pre_restore(site, "files") + pre_restore(site, "pg-database"))
        assert REGISTRY.get_sample_value("taiga_backup_last_run_success", {"kind": "safety_backup"}) == 1
        assert switch.kept_states(site.settings())[0]["safety_backup_owed"] is None
        with pytest.raises(JobFailed, match="owes no safety backup"):
            run_safety_backup(rid, give_up=True)
        assert switch.expire(expired_at_once) == [rid]  # made: it expires like any other now

        # a second restore whose safety backup fails the same way is given up: the state expires without one
        restored, safety = run_restore_answering()
        second = restored["restore_id"]
        (site.repo / "files").rename(site.repo / "files-away")
        try:
            with pytest.raises(JobFailed, match="replaced failed"):
                safety()
        finally:
            (site.repo / "files-away").rename(site.repo / "files")
        assert switch.expire(expired_at_once) == []
        given_up = run_safety_backup(second, give_up=True)
        assert given_up["state"] == "SUCCESS" and given_up["given_up"] is True and given_up["snapshots"] is None
        assert switch.expire(expired_at_once) == [second] and site.replicas() == ALL_DEPLOYMENTS
    finally:
        endpoint.close()
