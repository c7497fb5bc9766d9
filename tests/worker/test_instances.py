"""Many Taigas, one broker: two instances, each with its own database, media, namespace,
repositories and worker process, on one redis-server database. A job sent to one (backup, restore,
undo, prune, change-password) changes only that one; a request for one pushed onto the other's
queue is refused there and changes nothing; the keys of a worker from before instances move to the
first instance that starts; `taiga-backup fleet` shows both, each with its own figures."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import redis

from testkit import messages
from testkit.faults import app_back, wait_until
from testkit.restore_checks import live_state
from testkit.scenarios import change_everything, cli, snapshots, start_instance
from worker import fleet_view
from worker.adapters import metrics, redis_store
from worker.celery_app import make_app
from worker.runtime.stamp import queue

OLD_LAST_PRUNE = json.dumps({"job": "prune", "state": "SUCCESS", "task_id": "from-before-instances"})


def repository_bytes(site) -> dict:
    """Every file of both repositories (keys, config, packs, index, snapshots), by its digest:
    byte-identical, not only the same snapshots. Read before restic lists them (its lock file)."""
    return {str(path.relative_to(site.repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(site.repo.rglob("*")) if path.is_file()}


def untouched(site) -> dict:
    """Everything a job of the other instance must leave alone."""
    return {"repository": repository_bytes(site), "state": live_state(site), "replicas": site.replicas(),
            "snapshots": {repo: sorted(s["id"] for s in snapshots(site, repo)) for repo in ("files", "pg-database")}}


def test_jobs_change_only_their_instance_a_foreign_request_is_refused_and_the_fleet_shows_both(repos, site_b):
    site_a = repos
    broker = redis.Redis.from_url(site_a.env["CELERY_BROKER_URL"])
    assert site_b.env["CELERY_BROKER_URL"] == site_a.env["CELERY_BROKER_URL"]  # one broker, one database
    broker.set("taiga-backup:last:prune:success", OLD_LAST_PRUNE)  # left by a worker from before instances

    new_password = site_a.secrets / "restic-new-password"
    new_password.write_text("the-new-restic-password-of-a\n")
    workers = {"a": start_instance(site_a, "worker-a", RESTIC_NEW_PASSWORD_FILE=str(new_password)),
               "b": start_instance(site_b, "worker-b")}
    try:
        # the first instance to start took the old keys, the second none
        assert broker.get(redis_store.last_report_key("taiga", "prune", "SUCCESS")) == OLD_LAST_PRUNE.encode()
        assert not broker.exists("taiga-backup:last:prune:success")
        assert broker.get(redis_store.last_report_key("taiga-b", "prune", "SUCCESS")) is None
        assert "moved 1 Redis key(s) of the one-instance layout to instance taiga" in workers["a"].output()

        app_a = make_app(site_a.env)
        b_before = untouched(site_b)
        sent = app_a.send_task("taiga_backup.backup")
        # while it runs, the fleet view shows it under A (from the lease A's worker named), B idle
        running = wait_until(lambda: fleet_view.instance_view(broker, "taiga")["running"], 60, "A's backup running")
        assert running["kind"] == "backup" and running["task_id"] == sent.id
        assert fleet_view.instance_view(broker, "taiga-b")["running"] is None
        backup = sent.get(timeout=120)
        assert backup["state"] == "SUCCESS" and app_back(site_a)
        backed_up = live_state(site_a)
        change_everything(site_a)
        restore = app_a.send_task("taiga_backup.restore", kwargs={"snapshot": backup["backup_id"],
                                                                  "safety_backup": False}).get(timeout=120)
        assert restore["state"] == "SUCCESS" and live_state(site_a) == backed_up and app_back(site_a)
        assert untouched(site_b) == b_before
        assert "taiga_backup.backup[" not in workers["b"].output()
        assert "taiga_backup.restore[" not in workers["b"].output()
        assert broker.get(redis_store.report_key("taiga", restore["task_id"]))
        assert broker.get(redis_store.report_key("taiga-b", restore["task_id"])) is None

        # a restore for A, pushed raw onto B's queue: B refuses it, A never sees it
        a_before, b_before = untouched(site_a), untouched(site_b)
        message = messages.capture(site_a.env, "taiga_backup.restore", {"safety_backup": False})
        task_id = messages.push(site_a.env["CELERY_BROKER_URL"], message, queue("taiga-b"))
        line = f"refused taiga_backup.restore[{task_id}]: the request is for instance 'taiga', this worker serves 'taiga-b'"
        wait_until(lambda: line in workers["b"].output(), 60, "worker b to refuse the restore")
        report = json.loads(wait_until(lambda: broker.get(redis_store.report_key("taiga-b", task_id)), 10, "its report"))
        assert report["state"] == "FAILURE" and "for instance 'taiga'" in report["error"]
        # the report is stored as the task raises; Celery stores its FAILURE a moment later
        wait_until(lambda: app_a.AsyncResult(task_id).state == "FAILURE", 10, "its Celery state FAILURE")
        assert untouched(site_b) == b_before and untouched(site_a) == a_before
        assert task_id not in workers["a"].output()

        # undo, prune and change-password for A: A's repositories and live state change, B's not
        undone = app_a.send_task("taiga_backup.undo_restore").get(timeout=120)
        assert undone["state"] == "SUCCESS" and live_state(site_a) != backed_up and app_back(site_a)
        pruned = app_a.send_task("taiga_backup.prune").get(timeout=120)
        assert pruned["state"] == "SUCCESS"
        a_repository = repository_bytes(site_a)
        rotated = app_a.send_task("taiga_backup.change_password").get(timeout=120)
        assert rotated["state"] == "SUCCESS" and rotated["changed"] is True
        assert repository_bytes(site_a) != a_repository  # the new key, the old one gone
        assert untouched(site_b) == b_before
        for kind in ("undo_restore", "prune", "change_password"):
            assert f"taiga_backup.{kind}[" not in workers["b"].output()

        # the fleet view: both instances, each with its own figures, from another process
        done = cli(site_b, "fleet", "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        views = {v["instance"]: v for v in json.loads(done.stdout)}
        assert set(views) == {"taiga", "taiga-b"}
        a, b = views["taiga"], views["taiga-b"]
        assert a["last_backup"]["backup_id"] == backup["backup_id"] and a["last_backup"]["state"] == "SUCCESS"
        assert a["last_backup"]["task_id"] == backup["task_id"]
        assert a["last_backup"]["bytes_added"] == backup["bytes_added"]["total"] > 0
        assert b["last_backup"] is None and a["last_drill"] is None and b["last_drill"] is None
        now = datetime.now(timezone.utc)
        for view in (a, b):
            assert not view["silent"] and view["seen_age_seconds"] < 120 and view["running"] is None
            assert view["version"] == metrics.VERSION and view["schedule"] == "10 23 * * *"
            start_at = datetime.fromisoformat(view["next_backup_at"].replace("Z", "+00:00"))
            assert 0 < (start_at - now).total_seconds() <= 24 * 3600 and start_at.strftime("%H:%M") == "23:10"
        table = cli(site_a, "fleet", timeout=60)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("INSTANCE") and len(lines) == 3, table.stdout
        assert lines[1].startswith("taiga ") and backup["backup_id"] in lines[1] and "SUCCESS" in lines[1]
        assert lines[2].startswith("taiga-b ") and " none " in lines[2]

        # B's worker stops cleanly: the fleet view says so at once, A's goes on
        workers["b"].stop()
        after = {v["instance"]: v for v in json.loads(cli(site_a, "fleet", "--json", timeout=60).stdout)}
        assert after["taiga-b"]["stopped"] and after["taiga-b"]["silent"]
        assert not after["taiga"]["stopped"] and not after["taiga"]["silent"]
    finally:
        for worker in workers.values():
            worker.stop()
