"""The moments fault tests strike at, and the outcomes they check, shared by the crash, fault,
secret and security tests: a backup held with the app at 0, deployments back, Redis contents."""

from __future__ import annotations

import base64
import json
import threading
import time

import psycopg

from testkit.site import BACKUP_DEPLOYMENTS

ANNOTATION = "taiga-backup/original-replicas"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Polls until predicate() is truthy; returns its value or fails naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dump_blocked(site) -> bool:
    """pg_dump (application_name taiga-backup) is waiting for a table lock in the site's database."""
    with psycopg.connect(site.pg.admin_conninfo(), autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where datname=%s and application_name="
                           "'taiga-backup' and wait_event_type='Lock'", (site.dbname,)).fetchone()
    return bool(row[0])


def app_at_zero(site) -> bool:
    return all(site.kube.replicas(site.namespace, name) == 0 for name in BACKUP_DEPLOYMENTS)


def app_back(site) -> bool:
    """Every quiesced deployment at its original count with our annotation gone."""
    return all(site.kube.replicas(site.namespace, name) == count and ANNOTATION not in site.kube.annotations(site.namespace, name)
               for name, count in BACKUP_DEPLOYMENTS.items())


def snapshot_ids(site, repo: str) -> list[str]:
    return [s["id"] for s in json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]") or []]


def in_thread(fn):
    """Runs fn in a thread; returns a callable that joins it and returns its result or exception."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 300):
        thread.join(timeout)
        assert not thread.is_alive(), "the job did not end"
        return box.get("error", box.get("value"))

    return join


def redis_dump(connect) -> bytes:
    """Every key and value in every database of a Redis server (connect(db) -> client), with
    Celery's base64 message bodies decoded: what someone reading Redis would see."""
    chunks = []
    for db in range(16):
        c = connect(db)
        for key in c.scan_iter(count=1000):
            kind = c.type(key)
            if kind == b"string":
                values = [c.get(key)]
            elif kind == b"hash":
                values = [v for pair in c.hgetall(key).items() for v in pair]
            elif kind == b"list":
                values = c.lrange(key, 0, -1)
            elif kind == b"set":
                values = list(c.smembers(key))
            elif kind == b"zset":
                values = c.zrange(key, 0, -1)
            else:
                values = []
            chunks.append(key)
            for value in values:
                chunks.append(value or b"")
                chunks.extend(_message_bodies(value or b""))
    return b"\n".join(chunks)


def _message_bodies(value: bytes) -> list[bytes]:
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if isinstance(doc, dict) and isinstance(doc.get("body"), str):
        try:
            return [base64.b64decode(doc["body"])]
        except ValueError:
            return []
    return []
