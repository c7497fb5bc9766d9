"""worker/jobs/lease.py on fakeredis: one job per repository at a time, a dead holder's lease
expires, and a job waits briefly behind the reconciler (never the other way round)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from worker.jobs.lease import JobBusy, JobLock, LeaseLost


def test_job_lease_refuses_a_second_holder_and_expires_when_the_holder_dies():
    server = fakeredis.FakeServer()
    first = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    second = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    other_repo = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/other", lease_seconds=5)
    first.acquire("backup", "task-1")
    with pytest.raises(JobBusy) as err:
        second.acquire("restore", "task-2")
    assert "backup task task-1" in str(err.value)
    other_repo.acquire("backup", "task-3")  # another repository is independent
    other_repo.release()
    first._stop.set()  # the holder "dies": no more renewals
    first.redis.expire(first.key, 1)
    time.sleep(1.2)
    second.acquire("restore", "task-2")
    assert second.holder()["task_id"] == "task-2"
    second.release()
    assert second.holder() is None and second.active() is None


def test_a_job_waits_briefly_behind_the_reconciler_but_not_behind_a_job():
    import threading

    server = fakeredis.FakeServer()
    reconciler = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    job = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    reconciler.acquire("reconcile", "r-1")
    threading.Timer(0.5, reconciler.release).start()
    t0 = time.monotonic()
    job.acquire("backup", "b-1", patience=10)
    assert 0.4 < time.monotonic() - t0 < 5
    with pytest.raises(JobBusy):
        reconciler.acquire("reconcile", "r-2")  # a reconciler never waits behind a job
    job.release()


class ReleasedBetween(fakeredis.FakeRedis):
    """A client whose view has the holder release the lease right after our refused SET NX, before
    our GET of the holder: the reconciler's moment ending in between, as it happens under load."""

    def __init__(self, holder: JobLock, **kwargs):
        super().__init__(**kwargs)
        self.holder, self.raced = holder, False

    def set(self, *args, **kwargs):
        taken = super().set(*args, **kwargs)
        if not taken and kwargs.get("nx") and not self.raced:
            self.raced = True
            self.holder.release()
        return taken


def test_a_lease_released_between_the_refused_set_and_the_get_is_taken_not_refused_naming_nobody():
    server = fakeredis.FakeServer()
    reconciler = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    reconciler.acquire("reconcile", "r-1")
    job = JobLock(ReleasedBetween(reconciler, server=server), "repo", lease_seconds=5)
    job.acquire("backup", "b-1", patience=5)
    assert job.redis.raced and job.holder()["task_id"] == "b-1"
    job.release()


def test_a_transferred_lease_names_the_new_job_until_it_adopts_and_releases_it():
    """A restore hands its lease to its safety backup: the lease and the `active` record name the
    safety backup (so a crash is settled as its), nobody else can take it meanwhile, and one
    taken over is not handed on."""
    server = fakeredis.FakeServer()
    restore = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    other = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    restore.acquire("restore", "task-r")
    value = restore.transfer("safety_backup", "task-s", backup_id="20261203T100000Z")
    assert restore.holder()["task_id"] == "task-s" and restore.holder()["kind"] == "safety_backup"
    assert restore.active()["task_id"] == "task-s" and restore.active()["backup_id"] == "20261203T100000Z"
    with pytest.raises(JobBusy, match="safety_backup task task-s"):
        other.acquire("backup", "task-b")
    restore.pause(grace=5)
    restore.adopt(value)  # the safety backup's task, in the same process
    assert restore.active()["backup_id"] == "20261203T100000Z"  # the record is kept, not rewritten
    restore.release()
    assert restore.holder() is None and restore.active() is None

    other.acquire("backup", "task-b")
    other.redis.set(other.key, b'{"kind": "reconcile", "task_id": "x"}', ex=5)  # taken over
    with pytest.raises(LeaseLost):
        other.transfer("safety_backup", "task-s2")
    assert other.holder()["task_id"] == "x"
    other._stop.set()


def test_a_reconciler_vouches_only_for_the_job_whose_record_it_is():
    """What the reconciler saw of a dead job goes into that job's record, never into another's:
    the record may have changed hands between the look and the write."""
    server = fakeredis.FakeServer()
    job = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    reconciler = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    job.acquire("backup", "dead-job")
    job.note(backup_id="b1")
    assert reconciler.vouch("dead-job", window_held=True)
    active = reconciler.active()
    assert (active["task_id"], active["backup_id"], active["window_held"]) == ("dead-job", "b1", True)
    assert not reconciler.vouch("another-job", window_held=False)
    assert reconciler.active()["window_held"] is True
    job.release()
