"""Redis restarted empty (for real: the lease, the reports, the broker's keys gone) the moment each
step of a restore and of an undo begins. The job goes on, or stops; after it and after the next
reconcile the live state is exactly one whole state and the app is back. The jobs run in this
process, as tests/integration/test_restore_safe.py runs them."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from testkit.restore_checks import live_state
from testkit.scenarios import ALL_DEPLOYMENTS, run_restore
from testkit.switch_checks import backed_up_then_changed, one_whole_state, outcome, reconcile, restore_id, run_undo
from worker.jobs.job import Job


RESTORE_STEPS = ["validate", "choose", "plan", "settle", "load_database", "stage_files", "quiesce", "switch",
                 "resume", "cleanup"]
UNDO_STEPS = ["validate", "settle", "choose", "quiesce", "switch", "resume", "cleanup"]


def redis_restarted_when(site, monkeypatch, at: str) -> list:
    """Redis restarted empty (for real) the moment the job's step `at` begins, once; returns a
    list that says whether it happened."""
    struck: list = []
    step = Job.step

    @contextmanager
    def step_with_fault(self, name):
        if name == at and not struck:
            struck.append(name)
            site.redis_server.stop()
            site.redis_server.start()
        with step(self, name) as entry:
            yield entry

    monkeypatch.setattr(Job, "step", step_with_fault)
    return struck


@pytest.mark.slow
@pytest.mark.parametrize("job, at", [("restore", s) for s in RESTORE_STEPS] + [("undo", s) for s in UNDO_STEPS])
def test_redis_restarted_empty_at_each_step_of_a_restore_and_an_undo(repos, monkeypatch, job, at):
    """Redis (the lease, the reports) gone at any step: the job goes on or stops, and the live
    state is one whole state, the app back - after the job and after the next reconcile."""
    site = repos
    restored, before = backed_up_then_changed(site)
    if job == "undo":
        run_restore(safety_backup=False)
        restored, before = before, live_state(site)  # the undo's way back is the state before the restore
    with monkeypatch.context() as patched:
        struck = redis_restarted_when(site, patched, at)
        result = outcome(lambda: run_restore(safety_backup=False) if job == "restore" else run_undo())
    assert struck == [at], result
    if job == "restore":
        one_whole_state(site, before, restored, restore_id(site))
    else:
        assert live_state(site) in (before, restored), "the live state is a mix of two states"
    after_job = live_state(site)
    assert site.replicas() == ALL_DEPLOYMENTS, result
    reconcile(site)
    assert live_state(site) == after_job and site.replicas() == ALL_DEPLOYMENTS
