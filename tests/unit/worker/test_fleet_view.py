"""The fleet view, read from a real redis-server holding what workers of several instances wrote:
instances found by their records and their last reports (not the keys of the one-instance layout),
a silent, a stopped and a never-seen worker told apart, the last backup the newer of success and failure,
the running job from the lease, and a table whose columns line up."""

from __future__ import annotations

import json
import time

import pytest

from worker import fleet_view
from worker.adapters import redis_store

NOW = time.mktime((2026, 12, 3, 2, 22, 0, 0, 0, 0)) - time.timezone  # 2026-12-03T02:22:00Z
HOUR = 3600


def iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def worker(client, instance: str, host: str, seen: float, lease: str = "lease-a", next_at: str | None = None,
           stopped: bool = False):
    record = {"host": host, "version": "0.2.0", "schedule": "10 23 * * *", "timezone": "UTC",
              "next_backup_at": next_at, "lease": lease, "seen_at": int(seen), **({"stopped": True} if stopped else {})}
    redis_store.record_fleet(client, instance, redis_store.FLEET_WORKER + host, json.dumps(record))


def last(client, instance: str, kind: str, state: str, finished: float, **fields):
    report = {"job": kind, "state": state, "task_id": f"{kind}-{state}", "finished_at": iso(finished), **fields}
    client.set(redis_store.last_report_key(instance, kind, state), json.dumps(report))


def test_every_instance_with_its_worker_last_backup_running_job_and_drill(redis_client):
    client = redis_client
    # a: two worker hosts, the newer one seen 20 s ago; a good backup 3h12m ago after an older failure
    worker(client, "a", "pod-old", NOW - 2 * HOUR)
    worker(client, "a", "pod-new", NOW - 20, next_at="2026-12-03T23:10:00Z")
    worker(client, "a", "pod-drained", NOW - 5, stopped=True)  # a replica that stopped: pod-new speaks
    last(client, "a", "backup", "SUCCESS", NOW - (3 * HOUR + 12 * 60), backup_id="20261202T231012Z",
         backup_complete=True, bytes_added={"files": 1000, "pg-database": 800, "total": 1800},
         files={"total_bytes_processed": 5_000_000}, database={"dump_bytes": 2_000_000})
    last(client, "a", "backup", "FAILURE", NOW - 27 * HOUR, error="the database went away")
    last(client, "a", "verify", "SUCCESS", NOW - 52 * HOUR)
    client.set(redis_store.lease_keys_of("lease-a")[0], json.dumps(
        {"kind": "prune", "task_id": "p1", "host": "pod-new", "since": "2026-12-03T02:10:04Z", "token": "t"}))
    redis_store.record_fleet(client, "a", redis_store.FLEET_REPOSITORIES, json.dumps(
        {"counted_at": int(NOW - 60), "repositories": {"files": {"snapshots": 3, "size_bytes": 7000},
                                                       "pg-database": {"snapshots": 3, "size_bytes": 3000}}}))
    # b: its worker silent for 10 minutes, its last backup failed; the reconciler holds its lease
    worker(client, "b", "pod-b", NOW - 600, lease="lease-b")
    last(client, "b", "backup", "SUCCESS", NOW - 30 * HOUR, backup_id="20261201T234011Z")
    last(client, "b", "backup", "FAILURE", NOW - 2 * HOUR, backup_id="20261202T234011Z", error="boom")
    client.set(redis_store.lease_keys_of("lease-b")[0], json.dumps({"kind": "reconcile", "task_id": "r"}))
    # gone: its only worker stopped three days ago (nobody prunes its entry: still shown, as silent)
    worker(client, "gone", "pod-gone", NOW - 72 * HOUR)
    # quit: its worker stopped cleanly two minutes ago (said at once, not after the silence)
    worker(client, "quit", "pod-quit", NOW - 120, stopped=True)
    # old: a worker from before the fleet view, known by its last reports only
    last(client, "old", "prune", "SUCCESS", NOW - HOUR)
    # not instances: the one-instance layout's keys, another instance's report, the shared hash
    client.set("taiga-backup:last:prune:success", "{}")
    client.set(redis_store.report_key("c", "t1"), "{}")
    client.hset(redis_store.WORKERS_KEY, "pod-new", int(NOW))

    views = {v["instance"]: v for v in fleet_view.fleet(client, NOW)}
    assert list(views) == ["a", "b", "gone", "old", "quit"]
    a, b, gone, old, quit = (views[name] for name in ("a", "b", "gone", "old", "quit"))

    assert a["silent"] is False and a["seen_age_seconds"] == 20 and a["seen_at"] == iso(NOW - 20)
    assert a["stopped"] is False
    assert [(w["host"], w["stopped"]) for w in a["workers"]] == [("pod-drained", True), ("pod-new", False),
                                                                  ("pod-old", False)]
    assert a["next_backup_at"] == "2026-12-03T23:10:00Z" and a["version"] == "0.2.0"
    assert a["last_backup"] == {"state": "SUCCESS", "task_id": "backup-SUCCESS", "backup_id": "20261202T231012Z",
                                "finished_at": iso(NOW - (3 * HOUR + 12 * 60)), "age_seconds": 3 * HOUR + 12 * 60,
                                "bytes_added": 1800, "size_bytes": 7_000_000, "complete": True, "error": None}
    assert a["running"] == {"kind": "prune", "task_id": "p1", "host": "pod-new", "since": "2026-12-03T02:10:04Z"}
    assert a["last_drill"]["state"] == "SUCCESS" and a["last_drill"]["age_seconds"] == 52 * HOUR
    assert a["repository_bytes"] == 10_000 and a["repositories"]["files"]["snapshots"] == 3

    assert b["silent"] is True and b["seen_age_seconds"] == 600
    assert b["last_backup"]["state"] == "FAILURE" and b["last_backup"]["error"] == "boom"
    assert b["last_backup"]["backup_id"] == "20261202T234011Z"
    assert b["running"] is None  # the reconciler's moment is no job
    assert b["last_drill"] is None and b["repository_bytes"] is None

    assert gone["silent"] is True and gone["seen_age_seconds"] == 72 * HOUR and gone["stopped"] is False
    assert quit["silent"] is True and quit["stopped"] is True and quit["seen_age_seconds"] == 120
    assert old["silent"] is True and old["seen_at"] is None and old["workers"] == []
    assert old["last_backup"] is None and old["next_backup_at"] is None

    lines = fleet_view.table(list(views.values()), NOW).splitlines()
    assert len(lines) == 6
    header = lines[0]
    starts = [header.index(column) for column in fleet_view.COLUMNS]
    for line in lines[1:]:  # every cell starts under its column's header
        for start in starts[1:]:
            assert line[start - 2:start] == "  " and line[start] != " ", (line, start)
    assert lines[1].split("  ")[0] == "a" and "ok 20s" in lines[1] and "SUCCESS 20261202T231012Z" in lines[1]
    assert "3h 12m" in lines[1] and "1.8 kB" in lines[1] and "7.0 MB" in lines[1]
    assert "2026-12-03 23:10 (in 20h 48m)" in lines[1] and "prune since 02:10" in lines[1]
    assert "SUCCESS 2d 4h ago" in lines[1] and lines[1].endswith("10.0 kB")
    assert "SILENT 10m" in lines[2] and "FAILURE 20261202T234011Z" in lines[2] and "2h 0m" in lines[2]
    assert "SILENT 3d 0h" in lines[3]
    assert "NEVER SEEN" in lines[4] and " none " in lines[4]
    assert "STOPPED 2m" in lines[5]


def test_no_instance_at_all(redis_client):
    client = redis_client
    assert fleet_view.fleet(client, NOW) == []


@pytest.mark.parametrize("seconds, shown", [(None, "-"), (0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"),
                                            (3600, "1h 0m"), (3 * HOUR + 12 * 60 + 5, "3h 12m"),
                                            (52 * HOUR, "2d 4h")])
def test_ages_read_at_a_glance(seconds, shown):
    assert fleet_view.human_age(seconds) == shown
