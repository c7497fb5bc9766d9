"""A worker's fleet record: its next backup start is what its own Celery app's beat schedule says
(time zone included, none when backups are off), and writing it drops the entries of hosts gone
for a day, keeping the others'."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from worker.adapters import metrics, redis_store
from worker.celery_app import make_app
from worker.runtime import fleet


def env(redis_server, **extra) -> dict:
    return {"CELERY_BROKER_URL": redis_server.url, "TAIGA_INSTANCE": "a", **extra}


def settings(instance: str = "a", tz: str = "UTC"):
    return SimpleNamespace(instance=instance, timezone=tz, restic_repository="s3:https://example/bucket")


def test_the_next_start_is_the_apps_own_schedule_in_its_time_zone(redis_server):
    paris = ZoneInfo("Europe/Paris")
    app_env = env(redis_server, BACKUP_SCHEDULE="30 2 * * *", BACKUP_TIMEZONE="Europe/Paris")
    record = fleet.worker_record(settings(tz="Europe/Paris"), make_app(app_env), app_env)

    now = datetime.now(paris)
    expected = now.replace(hour=2, minute=30, second=0, microsecond=0)
    if expected <= now:
        expected = (expected + timedelta(days=1)).replace(hour=2, minute=30)
    assert record["next_backup_at"] == expected.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert record["schedule"] == "30 2 * * *" and record["timezone"] == "Europe/Paris"
    assert record["version"] == metrics.VERSION and record["host"] == socket.gethostname()
    assert record["lease"] == redis_store.repo_key("s3:https://example/bucket")  # never the URL
    assert abs(record["seen_at"] - time.time()) < 5


def test_no_next_start_when_backups_are_off(redis_server):
    app_env = env(redis_server, BACKUP_SCHEDULE="off")
    record = fleet.worker_record(settings(), make_app(app_env), app_env)
    assert record["next_backup_at"] is None and record["schedule"] is None


def test_recording_drops_hosts_gone_for_a_day_and_keeps_the_rest(redis_server, redis_client):
    client = redis_client
    key = redis_store.fleet_key("a")
    day = fleet.FORGET_AFTER_SECONDS
    for host, age in (("gone", day + 60), ("recent", day - 60)):
        client.hset(key, redis_store.FLEET_WORKER + host, json.dumps({"host": host, "seen_at": time.time() - age}))
    client.hset(key, redis_store.FLEET_REPOSITORIES, json.dumps({"counted_at": 1, "repositories": {}}))

    app_env = env(redis_server)
    fleet.record(client, settings(), make_app(app_env), app_env)

    fields = {f.decode() for f in client.hkeys(key)}
    assert fields == {redis_store.FLEET_WORKER + "recent", redis_store.FLEET_WORKER + socket.gethostname(),
                      redis_store.FLEET_REPOSITORIES}
    assert 0 < client.ttl(key) <= redis_store.REPORT_TTL
    assert redis_store.instances(client) == {"a"}
