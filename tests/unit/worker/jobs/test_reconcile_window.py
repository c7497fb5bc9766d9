"""worker/jobs/reconcile_flow.window_whole: when a dead backup's complete pair may be kept - only
when something saw its app held down by it to the end of its window."""

from __future__ import annotations

from types import SimpleNamespace

from worker.jobs.reconcile_flow import window_whole

SETTINGS = SimpleNamespace(quiesce_deployments=["taiga-gateway", "taiga-front"])
DEAD = {"kind": "backup", "task_id": "dead", "backup_id": "b1"}


def test_a_window_is_whole_when_its_resume_checked_it_or_the_reconciler_found_the_app_held_by_the_job():
    assert window_whole(SETTINGS, {**DEAD, "window_held": True}, {}) is True
    assert window_whole(SETTINGS, DEAD, {"taiga-gateway": "dead", "taiga-front": "dead"}) is True


def test_a_window_is_not_whole_when_any_deployment_was_up_or_another_jobs():
    assert window_whole(SETTINGS, DEAD, {"taiga-gateway": "dead"}) is False  # front brought up by hand
    assert window_whole(SETTINGS, DEAD, {"taiga-gateway": "dead", "taiga-front": "later-job"}) is False
    assert window_whole(SETTINGS, DEAD, {}) is False


def test_unread_deployments_postpone_the_judgement_and_no_window_is_asked_where_none_exists():
    assert window_whole(SETTINGS, DEAD, None) is None  # the API did not answer: the next reconcile asks
    assert window_whole(SETTINGS, {**DEAD, "kind": "safety_backup"}, None) is True  # a kept state, not the app
    assert window_whole(SimpleNamespace(quiesce_deployments=[]), DEAD, None) is True  # nothing is quiesced
