"""Flower, run as documented (`celery -A worker.celery_app flower`), sees our tasks through the
broker's events, and asks for basic auth when FLOWER_BASIC_AUTH is set."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from testkit.site import ROOT
from testkit.servers import free_port, wait_port
from testkit.scenarios import BACKUP_CHAIN, start_idle_worker

CREDENTIALS = "operator:flower-test-pw"


def get(url: str, auth: str | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def poll(url: str, done, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(url, CREDENTIALS)
        if status == 200 and done(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: {status} {body}")
        time.sleep(0.3)


@pytest.fixture
def flower(site, tmp_path):
    port = free_port()
    # credentials in the environment, never in argv (`ps` shows argv to every user)
    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "FLOWER_BASIC_AUTH": CREDENTIALS}
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower", f"--port={port}",
                             "--address=127.0.0.1"], env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


@pytest.mark.slow
def test_flower_lists_a_succeeded_backup_and_wants_basic_auth(site, start_worker, celery_client, flower):
    start_idle_worker(start_worker, celery_client)
    assert get(f"{flower}/api/tasks")[0] == 401
    assert get(f"{flower}/api/tasks", "operator:wrong")[0] == 401
    # Flower knows tasks only from the events it receives: wait until the worker's reach it
    poll(f"{flower}/api/workers?status=true", lambda workers: any(workers.values()))

    result = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "manual"})
    assert result.get(timeout=120)["state"] == "SUCCESS"

    # the backup replaced itself with its chain: the last link carries its id, every link its root id
    steps = BACKUP_CHAIN

    def chain_done(tasks):
        links = [t for t in tasks.values() if t.get("root_id") == result.id and t["uuid"] != result.id]
        return len(links) == len(steps) - 1 and all(t.get("state") == "SUCCESS" for t in links) \
            and tasks.get(result.id, {}).get("state") == "SUCCESS"

    tasks = poll(f"{flower}/api/tasks", chain_done)
    links = sorted((t for t in tasks.values() if t["root_id"] == result.id and t["uuid"] != result.id),
                   key=lambda t: t["received"])
    assert [t["name"] for t in links] == steps[:-1]
    assert all(t["runtime"] is not None and t["worker"].startswith(f"taiga-backup-{site.instance}@") for t in links)
    assert links[0]["parent_id"] == result.id and all(b["parent_id"] == a["uuid"] for a, b in zip(links, links[1:]))
    # the id the caller got: the backup, then (replaced) the chain's last link, whose result is the report
    last = tasks[result.id]
    assert last["name"] in ("taiga_backup.backup", "taiga_backup.finish") and last["runtime"] is not None


def test_one_flower_on_a_shared_broker_shows_every_instances_workers_queues_and_tasks(site, start_worker,
                                                                                     celery_client, flower):
    """Two Taigas' workers on one broker, one Flower (the instance it was started for is only
    where it sends nothing): each worker by its node name, each instance's queue, each one's tasks."""
    from worker.runtime.stamp import node_name, queue

    start_worker()
    start_worker(TAIGA_INSTANCE="taiga-other")
    instances = (site.instance, "taiga-other")
    sent = {name: celery_client.send_task("taiga_backup.reconcile", queue=queue(name)).id for name in instances}

    workers = poll(f"{flower}/api/workers?refresh=1",
                   lambda body: all(node_name(name, socket.gethostname()) in (body or {}) for name in instances))
    for name in instances:
        served = {q["name"] for q in workers[node_name(name, socket.gethostname())]["active_queues"]}
        assert queue(name) in served, (name, served)
    lengths = poll(f"{flower}/api/queues/length", lambda body: body and body.get("active_queues"))
    assert {queue(name) for name in instances} <= {q["name"] for q in lengths["active_queues"]}, lengths
    tasks = poll(f"{flower}/api/tasks", lambda body: all(body.get(task_id, {}).get("state") == "SUCCESS"
                                                        for task_id in sent.values()))
    for name, task_id in sent.items():
        assert tasks[task_id]["worker"] == node_name(name, socket.gethostname()), (name, tasks[task_id])
