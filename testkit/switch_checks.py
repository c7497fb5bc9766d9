"""The restore and the undo run in a test process, and what their results must be under a fault:
exactly one whole state live, nothing the user made lost, the app back - for the fault tests of
the switch (tests/worker/test_switch_faults.py, test_restore_redis_restart.py)."""

from __future__ import annotations

import os

from testkit.restore_checks import kept_state, live_state
from testkit.scenarios import add_odd_files, change_everything, run_backup
from worker import instance
from worker.backups import media, switch
from worker.errors import JobFailed
from worker.jobs import reconcile_flow, requests
from worker.jobs.job import run_job


def run_undo() -> dict:
    from tasks.undo_restore import undo

    checked = requests.keyword_fields(requests.UNDO_RESTORE, (), {}, requests.UNDO_FIELDS)
    return run_job(None, "undo_restore", lambda job: undo(job, checked.get("restore_id")))


def outcome(fn):
    """The job's report, or its JobFailed."""
    try:
        return fn()
    except JobFailed as exc:
        return exc


def reconcile(site) -> dict:
    """The reconciler as the worker that ran the job would run it next: that worker is alive
    (this process) and its job has ended."""
    view = reconcile_flow.CeleryView(ended=lambda _task: True, mark_failed=lambda *_a: None,
                                     live=lambda: {instance.holder()}, jobs=lambda: {instance.holder(): set()})
    return reconcile_flow.reconcile(site.settings(), view, "reconcile-after-fault")


def backed_up_then_changed(site) -> tuple[dict, dict]:
    """The state a backup took and the changed live state after it, an upload made since included."""
    add_odd_files(site.media)
    backed_up = live_state(site)
    run_backup()
    change_everything(site)
    (site.media / "uploaded before the restore.bin").write_bytes(os.urandom(5000))
    return backed_up, live_state(site)


def one_whole_state(site, before: dict, restored: dict, rid: str) -> str:
    """The live state is exactly `before` or `restored`; when it is the restored one, `before` is
    whole in the kept folder (nothing the user made is lost). Returns which."""
    now = live_state(site)
    assert now in (before, restored), "the live state is a mix of two states"
    if now == before:
        return "previous"
    kept = kept_state(site, rid)
    assert kept["db"] == before["db"]
    assert kept["files"] == {k: v for k, v in before["files"].items() if not media.is_ours(k)}
    return "restored"


def restore_id(site) -> str:
    """The newest kept state's restore id (asked of the server directly, not through the proxy)."""
    ids = [k["id"] for k in switch.kept_states(site.settings(POSTGRES_HOST=f"127.0.0.1:{site.pg.port}"))]
    return ids[-1] if ids else ""
