"""A worker SIGKILLed (with psql and restic) during a restore's load and during its switch: the next
worker comes back on one whole state - the previous one or the restored one, never a mix - before
the reconciler resumes the app. Real worker processes, Redis, PostgreSQL, restic.

The moment is chosen with the test-only pause point TAIGA_BACKUP_TEST_PAUSE (worker.pause_points): the job stops there, its children alive, and says so in the worker's log."""

from __future__ import annotations

import json

import pytest
from celery.result import AsyncResult

from testkit.faults import wait_until
from testkit.restore_checks import kept_state, live_state, side_copies
from testkit.scenarios import ALL_DEPLOYMENTS, add_odd_files, change_everything, reconcile_now, run_backup, snapshots
from testkit.site import NAMESPACE, descendants

LEASE = 5


def paused(worker, name: str) -> bool:
    return f"taiga-backup test pause: {name}" in worker.output()


def children(worker) -> list[str]:
    names = []
    for pid in descendants(worker.proc.pid):
        try:
            names.append(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    return names


def backed_up_then_changed(site) -> tuple[dict, dict]:
    """The state a backup took (odd file names included) and the changed live state after it."""
    add_odd_files(site.media)
    backed_up = live_state(site)
    run_backup()
    change_everything(site)
    return backed_up, live_state(site)


@pytest.mark.slow
def test_sigkill_during_the_load_leaves_the_live_state_and_the_app_up(repos, start_worker, celery_client):
    site = repos
    run_backup()
    change_everything(site)
    changed = live_state(site)
    history = {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS}
    first = start_worker(JOB_LOCK_LEASE=LEASE, TAIGA_BACKUP_TEST_PAUSE="load")
    task = celery_client.send_task("taiga_backup.restore", kwargs={"safety_backup": False})
    wait_until(lambda: paused(first, "load"), 120, "the restore paused while loading")
    assert {"psql", "restic"} <= set(children(first))
    assert side_copies(site)["databases"]  # the load goes into the side database, beside the live one
    first.kill()

    assert live_state(site) == changed and site.replicas() == ALL_DEPLOYMENTS
    start_worker(JOB_LOCK_LEASE=LEASE)
    wait_until(lambda: side_copies(site) == {"databases": [], "dirs": []}, 90, "the dead load's side copies removed")
    wait_until(lambda: AsyncResult(task.id, app=celery_client).state == "FAILURE", 60, "the restore marked FAILURE")
    assert live_state(site) == changed
    assert {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS} == history  # never stopped


@pytest.mark.slow
@pytest.mark.parametrize("pause,outcome", [("switch", "restored"), ("undo", "previous")])
def test_sigkill_during_the_switch_comes_back_on_one_whole_state(repos, start_worker, celery_client, pause, outcome):
    """Killed halfway through the media moves - the database already renamed, the live entries in
    the kept folder, the root empty - the next worker finishes the switch the database says
    happened. For `undo`, halfway back: the restored entries half out."""
    site = repos
    backed_up, changed = backed_up_then_changed(site)
    env = {"JOB_LOCK_LEASE": LEASE, "TAIGA_BACKUP_TEST_PAUSE": pause}
    if pause == "undo":
        first = start_worker(JOB_LOCK_LEASE=LEASE)
        report = celery_client.send_task("taiga_backup.restore", kwargs={"safety_backup": False}).get(timeout=240)
        assert live_state(site) == backed_up
        first.stop()
        first = start_worker(**env)
        task = celery_client.send_task("taiga_backup.undo_restore")
    else:
        first = start_worker(**env)
        task = celery_client.send_task("taiga_backup.restore", kwargs={"safety_backup": False})
    wait_until(lambda: paused(first, pause), 240, f"the job paused in the {pause}")
    assert all(site.kube.replicas(NAMESPACE, n) == 0 for n in ALL_DEPLOYMENTS)  # down for the switch only
    first.kill()
    assert live_state(site) not in (backed_up, changed)  # a mix on disk right now: what must never be served

    start_worker(JOB_LOCK_LEASE=LEASE)
    wait_until(lambda: site.replicas() == ALL_DEPLOYMENTS, 90, "the app resumed by the reconciler")
    expected = backed_up if outcome == "restored" else changed
    assert live_state(site) == expected
    assert not (site.media / ".taiga-backup-switch.json").exists()
    assert side_copies(site) == {"databases": [], "dirs": []}
    if outcome == "restored":
        rid = [n for n in (r[0] for r in site.pg.sql("select datname from pg_database"))
               if n.startswith(site.dbname + "__before_")][0].rsplit("_", 1)[1]
        assert kept_state(site, rid)["db"] == changed["db"]  # the previous state kept, for undo
    else:
        assert report["restore_id"]
    wait_until(lambda: AsyncResult(task.id, app=celery_client).state == "FAILURE", 60, "the job marked FAILURE")


@pytest.mark.slow
def test_the_restore_answers_before_its_safety_backup_whose_crash_keeps_the_state_until_a_retry(
        repos, start_worker, celery_client, tmp_path):
    """The restore answers SUCCESS with the app up while its safety backup - a job of its own,
    named in the answer - is still running. Killed there (the worker and its children), once the
    safety backup has stored its database half and not yet its media half: the restore stays
    SUCCESS; the safety backup is marked FAILURE by its own id and its half backup forgotten, so
    no `latest` (the old procedure's restore) points at it; the kept state stays - even with
    RESTORE_KEEP_PREVIOUS=0 - until an operator's `safety-backup` makes the backup, and expires
    like any other after that."""
    from testkit import dataset
    from testkit.scenarios import cli

    site = repos
    backed_up, changed = backed_up_then_changed(site)
    first = start_worker(JOB_LOCK_LEASE=LEASE, TAIGA_BACKUP_TEST_PAUSE="safety_files")
    restored = celery_client.send_task("taiga_backup.restore").get(timeout=240)
    assert restored["state"] == "SUCCESS" and site.replicas() == ALL_DEPLOYMENTS
    assert live_state(site) == backed_up
    rid, safety_id = restored["restore_id"], restored["safety_backup"]["task_id"]
    wait_until(lambda: paused(first, "safety_files"), 240, "the safety backup paused before its media half")
    assert AsyncResult(safety_id, app=celery_client).state in ("STARTED", "PROGRESS")  # after the answer
    wait_until(lambda: any("kind=pre-restore" in (s.get("tags") or []) for s in snapshots(site, "pg-database")),
               120, "the safety backup's database half stored")
    first.kill()

    start_worker(JOB_LOCK_LEASE=LEASE, RESTORE_KEEP_PREVIOUS=0)
    wait_until(lambda: AsyncResult(safety_id, app=celery_client).state == "FAILURE", 90,
               "the safety backup marked FAILURE")
    assert AsyncResult(restored["task_id"], app=celery_client).state == "SUCCESS"
    for repo in ("files", "pg-database"):
        assert not [s for s in snapshots(site, repo) if "kind=pre-restore" in (s.get("tags") or [])], repo
    assert live_state(site) == backed_up and site.replicas() == ALL_DEPLOYMENTS
    reconcile_now(celery_client, timeout=120)  # expires what is due
    kept = json.loads(cli(site, "snapshots", "--kept", "--json").stdout)
    assert [(k["id"], k["expires_at"], k["safety_backup_owed"]["state"]) for k in kept] == [(rid, None, "running")]
    assert kept_state(site, rid) == {"db": changed["db"], "files": {
        k: v for k, v in changed["files"].items() if k != ".taiga-backup-media"}}

    again = cli(site, "safety-backup", rid, "--wait", "--json", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    made = json.loads(again.stdout)["result"]
    assert made["job"] == "safety_backup" and made["restore_id"] == rid and made["backup_id"] != restored[
        "safety_backup"]["backup_id"]
    site.restic("files", "restore", made["snapshots"]["files"], "--target", str(tmp_path / "safety"))
    assert dataset.tree_digest(str(tmp_path / "safety")) == kept_state(site, rid)["files"]
    reconcile_now(celery_client, timeout=120)
    assert json.loads(cli(site, "snapshots", "--kept", "--json").stdout) == []  # owed nothing: expired
