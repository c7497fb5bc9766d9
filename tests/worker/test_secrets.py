"""Secrets never show: not in any process's argv, not in the worker's log, not in Redis (task
messages, results, reports), not in errors - looked for while a backup runs and after it, and after
a failed one. Each child gets only the secrets it needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.site import descendants
from testkit.faults import dump_blocked, redis_dump, wait_until
from testkit.servers import RedisServer
from testkit.scenarios import hold_table_lock

REDIS_PASSWORD = "redis-Pw-4b1d9e7f2a"
AWS_KEY_ID = "AKIA5ECRETKEY1D77Q"
AWS_SECRET = "aws-Secret-8c3f0a9d6e2b"
WRONG_DB_PASSWORD = "wrong-pg-Pw-51c7d0e3"


def proc_file(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, or not ours
        return b""


def environ(pid: int) -> dict:
    pairs = [item.split(b"=", 1) for item in proc_file(pid, "environ").split(b"\0") if b"=" in item]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def leaks(text: bytes, secrets) -> list[str]:
    return [s for s in secrets if s.encode() in text]


@pytest.fixture
def private_redis():
    server = RedisServer(password=REDIS_PASSWORD).start()
    yield server
    server.cleanup()


@pytest.mark.slow
def test_no_secret_in_argv_logs_redis_or_results_and_children_get_only_their_own(
        repos, private_redis, start_worker, monkeypatch):
    from redis import Redis

    from worker.celery_app import make_app

    site = repos
    db_password = site.db_password
    restic_password = site.password_file.read_text().strip()
    secrets = [db_password, restic_password, REDIS_PASSWORD, AWS_KEY_ID, AWS_SECRET]
    files = {"CELERY_BROKER_URL_FILE": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{private_redis.port}/0",
             "AWS_ACCESS_KEY_ID_FILE": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY_FILE": AWS_SECRET}
    env = {"CELERY_BROKER_URL": ""}
    monkeypatch.setenv("CELERY_BROKER_URL", "")  # Celery prefers it to the configured URL (here: the file's)
    for name, value in files.items():
        path = site.secrets / name.lower()
        path.write_text(value + "\n")
        env[name] = str(path)
    worker = start_worker(**env)
    client = make_app({**site.env, **env})
    def redis(db):
        return Redis(host="127.0.0.1", port=private_redis.port, password=REDIS_PASSWORD, db=db)

    lock = hold_table_lock(site)
    try:
        task = client.send_task("taiga_backup.backup", kwargs={"trigger": "chat"})
        wait_until(lambda: dump_blocked(site), 60, "pg_dump running")
        children = {Path(proc_file(pid, "cmdline").split(b"\0")[0].decode()).name: pid
                    for pid in descendants(worker.proc.pid)}
        assert {"pg_dump", "restic"} <= set(children), children
        every_argv = b"\n".join(proc_file(int(p), "cmdline") for p in os.listdir("/proc") if p.isdigit())
        assert leaks(every_argv, secrets) == []
        assert b"--no-password" in proc_file(children["pg_dump"], "cmdline")

        # each child has what it needs and nothing else; the worker itself holds only file paths
        pg_env, restic_env = environ(children["pg_dump"]), environ(children["restic"])
        assert pg_env["PGPASSWORD"] == db_password
        assert leaks("\n".join(pg_env.values()).encode(), [restic_password, REDIS_PASSWORD, AWS_KEY_ID, AWS_SECRET]) == []
        assert restic_env["RESTIC_PASSWORD_FILE"] == str(site.password_file)
        assert leaks("\n".join(restic_env.values()).encode(), [db_password, restic_password, REDIS_PASSWORD]) == []
        assert leaks("\n".join(environ(worker.proc.pid).values()).encode(), secrets) == []

        assert leaks(worker.output().encode(), secrets) == []
        assert leaks(redis_dump(redis), secrets) == []
    finally:
        lock.execute("rollback")
        lock.close()
    assert task.get(timeout=120)["state"] == "SUCCESS"
    assert leaks(worker.output().encode(), secrets) == []
    assert leaks(redis_dump(redis), secrets) == []

    # a failing job: its error, report and log carry no secret either (not even the wrong one)
    (site.secrets / "postgres-password").write_text(WRONG_DB_PASSWORD + "\n")
    failed = client.send_task("taiga_backup.backup")
    with pytest.raises(Exception) as err:
        failed.get(timeout=120)
    assert "password authentication failed" in str(err.value)
    assert leaks(worker.output().encode(), secrets + [WRONG_DB_PASSWORD]) == []
    dump = redis_dump(redis)
    assert b"password authentication failed" in dump  # the failure is there ...
    assert leaks(dump, secrets + [WRONG_DB_PASSWORD]) == []  # ... the secrets are not
