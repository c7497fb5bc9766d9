"""Steps the tests take again and again: run a job in-process, hold pg_dump up, describe the state
a restore must reproduce, change it, start a worker whose start-up reconcile is over (of one
instance among several, too)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Callable

import psycopg

from testkit import dataset
from testkit.faults import wait_until
from testkit.site import BACKUP_DEPLOYMENTS, RESTORE_ONLY_DEPLOYMENTS, ROOT, WorkerProcess

# the backup's chain as the README documents it, the id the caller got last: what the tests
# expect to see run (in Celery's result backend and in Flower), in this order
BACKUP_CHAIN = ["taiga_backup.prepare", "taiga_backup.media_prepass", "taiga_backup.quiesce", "taiga_backup.dump_db",
                "taiga_backup.restic_backup", "taiga_backup.resume", "taiga_backup.finish"]

ALL_DEPLOYMENTS = {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}
ODD_NAMES = ["with space.txt", "ünïcödé 名前.md", "-leading-dash", "quote'single\"double", "semi;colon $(x) `y`",
             "line\nbreak", "dir with space/-nested 'odd'"]
_seeds = itertools.count(100)


def run_backup(trigger="manual"):
    """The backup job in this process (no queue), as the task runs it."""
    from worker.jobs.backup_flow import take_backup
    from worker.jobs.job import run_job

    return run_job(None, "backup", lambda job: take_backup(job, trigger))


def run_restore(*args, **kwargs) -> dict:
    """The restore job in this process, request validation first, as the task runs it."""
    from tasks.restore import restore_backup
    from worker.jobs import requests
    from worker.jobs.job import run_job

    request = requests.restore_request(args, kwargs)
    return run_job(None, "restore", lambda job: restore_backup(job, request))


def run_restore_answering(*args, **kwargs) -> tuple[dict, Callable[[], dict | None]]:
    """The restore as a worker runs it, in this process: it answers once the app is back and hands
    its safety backup over to a job of its own (safety_flow.hand_over). Returns the restore's
    report, and a function that runs the safety backup's task as the worker would run the
    message the restore sent (None when none was sent): its report, or JobFailed."""
    from tasks.restore import restore_backup
    from worker.jobs import requests, safety_flow
    from worker.jobs.job import run_job

    request = requests.restore_request(args, kwargs)
    sent: list[tuple[str, dict]] = []
    report = run_job(None, "restore", lambda job: restore_backup(job, request, lambda *message: sent.append(message)))

    def safety() -> dict | None:
        if not sent:
            return None
        task_id, fields = sent.pop()
        task = SimpleNamespace(request=SimpleNamespace(id=task_id), update_state=lambda **_: None)
        return safety_flow.run(task, requests.safety_request((), fields))

    return report, safety


def run_safety_backup(restore_id: str, give_up: bool = False) -> dict:
    """An operator's `safety-backup` in this process, as the task runs it."""
    from worker.jobs import requests, safety_flow

    fields = {"restore_id": restore_id, **({"give_up": True} if give_up else {})}
    return safety_flow.run(None, requests.safety_request((), fields))


def snapshots(site, repo):
    return json.loads(site.restic(repo, "snapshots", "--json").stdout or b"[]")


def cli(site, *args, timeout=180):
    """The real CLI in its own process, as an operator runs it."""
    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def hold_table_lock(site):
    """Keeps pg_dump waiting (so a backup stays running) until the returned connection rolls back."""
    conn = psycopg.connect(site.pg.admin_conninfo(site.dbname))
    conn.execute("begin")
    conn.execute("lock table projects_project in access exclusive mode")
    return conn


def state(site) -> dict:
    """What a restore must reproduce: every table's rows and sequences, every file's bytes."""
    return {"db": dataset.table_checksums(site.conninfo), "files": dataset.tree_digest(str(site.media))}


def add_odd_files(media) -> None:
    for name in ODD_NAMES:
        path = media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 3)
    os.symlink("with space.txt", media / "link to space")


def change_everything(site) -> None:
    """A day of work plus files added, changed and deleted since the backup."""
    dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=next(_seeds))
    (site.media / "added since.bin").write_bytes(os.urandom(3000))
    (site.media / "new dir" / "deeper").mkdir(parents=True, exist_ok=True)
    (site.media / "new dir" / "deeper" / "f").write_text("new")
    (site.media / "with space.txt").write_text("changed")
    (site.media / "-leading-dash").unlink(missing_ok=True)


def reconcile_now(celery_client, timeout=60) -> dict:
    """Sends a reconcile and returns its summary, found (through the app's result backend) in the
    capped list of recent ones: the task stores no Celery result. Raises RuntimeError with its
    error when it failed."""
    from worker.adapters.redis_store import reconcile_recent_key
    from worker.runtime.stamp import instance_of

    key = reconcile_recent_key(instance_of(celery_client.conf.task_default_queue))  # the client's instance
    task_id = celery_client.send_task("taiga_backup.reconcile").id
    client = celery_client.backend.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for summary in map(json.loads, client.lrange(key, 0, -1)):
            if summary.get("task_id") == task_id:
                if summary["state"] == "error":
                    raise RuntimeError(summary["error"])
                return summary
        time.sleep(0.1)
    raise TimeoutError(f"reconcile {task_id} recorded no summary within {timeout} s")


def start_idle_worker(start_worker, celery_client, **env):
    """A worker whose start-up reconcile is over: it holds the repository lease for a moment, and a
    backup arriving meanwhile is refused. Its second, delayed one comes after the test (long lease)."""
    worker = start_worker(JOB_LOCK_LEASE=120, **env)
    while reconcile_now(celery_client, timeout=30)["state"] != "ok":
        time.sleep(0.1)
    return worker


def start_instance(site, name: str, **env) -> "WorkerProcess":
    """A worker of `site` (one instance of several on the broker), ready by its log (a ping is
    answered by the other instances' workers too) and done with its start-up reconcile (which
    holds the repository lease a moment). `env` overrides; JOB_LOCK_LEASE is 120 unless given."""
    from worker.celery_app import make_app

    env = {**os.environ, **site.env, "HOME": str(site.root), "PYTHONPATH": str(ROOT), "JOB_LOCK_LEASE": "120",
           **{k: str(v) for k, v in env.items()}}
    worker = WorkerProcess(env, False, site.root / f"{name}.log")
    wait_until(lambda: " ready." in worker.output() or worker.proc.poll() is not None, 60, f"worker {name}")
    assert worker.proc.poll() is None, worker.output()
    app = make_app(site.env)
    while reconcile_now(app, timeout=30)["state"] != "ok":
        time.sleep(0.1)
    return worker
