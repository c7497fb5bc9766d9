"""The record of signed requests already run (worker.runtime.nonces) and the stamp check that uses
it: first seen exactly once, across processes and restarts of Redis and the worker; expired
records cleaned up; a record that cannot be made refuses the request."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import fakeredis
import pytest

from worker.backups import media, tree_state
from worker.runtime import nonces, security
from worker.runtime.nonces import NonceFiles, NonceStoreError

TTL = 900.0


def nonce() -> str:
    return uuid.uuid4().hex


def test_of_many_deliveries_of_one_nonce_at_once_exactly_one_is_first(tmp_path):
    store = NonceFiles(str(tmp_path / "nonces"), TTL)
    n, start, results = nonce(), threading.Barrier(16), []

    def deliver():
        start.wait()
        results.append(store.first_seen(n, time.time() + TTL))

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]


def test_a_record_is_a_private_file_named_by_the_nonce_and_outlives_the_process(tmp_path):
    directory = tmp_path / "state" / "nonces"
    n, expires = nonce(), time.time() + TTL
    assert NonceFiles(str(directory), TTL).first_seen(n, expires, "taiga_backup.backup[id-1]")
    assert os.listdir(directory) == [n]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / n).st_mode) == 0o600
    assert json.loads((directory / n).read_text()) == {"expires": expires, "request": "taiga_backup.backup[id-1]"}
    assert not NonceFiles(str(directory), TTL).first_seen(n, expires)  # a restarted worker


def test_expired_records_are_swept_and_others_left_alone(tmp_path):
    directory = tmp_path / "nonces"
    store = NonceFiles(str(directory), TTL)
    now = time.time()
    expired, live, torn = nonce(), nonce(), nonce()
    store.first_seen(expired, now - nonces.MARGIN - 1)
    store.first_seen(live, now + 10)
    (directory / torn).write_text("")  # a crash between create and write: kept as long as any request lives
    (directory / "README").write_text("not ours")
    link = nonce()
    os.symlink(directory / live, directory / link)  # not a record we made
    assert store.sweep(now) == 1
    assert sorted(os.listdir(directory)) == sorted([live, torn, "README", link])
    assert store.sweep(now + TTL + nonces.MARGIN + 1) == 2  # the torn one and, by then, the live one
    assert sorted(os.listdir(directory)) == sorted(["README", link])


def test_the_sweep_runs_now_and_then_on_the_way_of_a_check(tmp_path, monkeypatch):
    directory = tmp_path / "nonces"
    store = NonceFiles(str(directory), TTL)
    old = nonce()
    store.first_seen(old, time.time() - nonces.MARGIN - 1)  # swept before this record was made
    assert (directory / old).exists()
    store.first_seen(nonce(), time.time() + TTL)  # not yet: at most every SWEEP_EVERY seconds
    assert (directory / old).exists()
    monkeypatch.setattr(nonces, "SWEEP_EVERY", 0.0)
    store._next_sweep = 0.0
    store.first_seen(nonce(), time.time() + TTL)
    assert not (directory / old).exists()


def test_a_record_that_cannot_be_made_is_an_error_never_a_first(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(NonceStoreError, match=f"cannot record the request in NONCE_DIR {blocker}/nonces"):
        NonceFiles(str(blocker / "nonces"), TTL).first_seen(nonce(), time.time() + TTL)
    with pytest.raises(NonceStoreError, match="not a nonce"):
        NonceFiles(str(tmp_path / "nonces"), TTL).first_seen("../../etc/passwd", time.time() + TTL)
    assert not (tmp_path / "nonces").exists()


# -- the stamp check ---------------------------------------------------------------------------

def task(name="taiga_backup.backup", task_id="id-1"):
    return SimpleNamespace(name=name, request=SimpleNamespace(id=task_id))


def stamped(t, ttl=TTL, **headers) -> dict:
    body = ((), {}, {})
    security.stamp(body, {"task": t.name, "id": t.request.id, **headers}, ttl)
    return body[1][security.STAMP]


def test_a_replay_is_refused_after_redis_restarted_empty_and_when_either_store_saw_it(tmp_path):
    files, redis = NonceFiles(str(tmp_path / "nonces"), TTL), fakeredis.FakeRedis()
    t = task()
    value = stamped(t)
    security.check_stamp(t, value, files, redis, TTL, "taiga")
    redis.flushall()  # Redis without persistence, restarted
    with pytest.raises(security.RequestRefused, match="already run once"):
        security.check_stamp(t, value, files, redis, TTL, "taiga")
    seen_by_redis_only = stamped(t)  # e.g. run by a worker with a nonce directory of its own
    redis.set("taiga-backup:taiga:nonce:" + seen_by_redis_only["nonce"], "x")
    with pytest.raises(security.RequestRefused, match="already run once"):
        security.check_stamp(t, seen_by_redis_only, files, redis, TTL, "taiga")


def test_a_request_that_cannot_be_recorded_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    files = NonceFiles(str(tmp_path / "a-file" / "nonces"), TTL)
    t = task()
    with pytest.raises(security.RequestRefused, match="cannot record the request in NONCE_DIR .*not run"):
        security.check_stamp(t, stamped(t), files, fakeredis.FakeRedis(), TTL, "taiga")


def test_a_stamp_living_longer_than_the_workers_ttl_is_refused(tmp_path):
    files, t = NonceFiles(str(tmp_path / "nonces"), TTL), task()
    with pytest.raises(security.RequestRefused, match="longer than this worker allows"):
        security.check_stamp(t, stamped(t, ttl=3600), files, fakeredis.FakeRedis(), TTL, "taiga")
    security.check_stamp(t, stamped(t, ttl=TTL + security.CLOCK_SKEW - 5), files, fakeredis.FakeRedis(), TTL, "taiga")


def test_a_retried_message_is_valid_for_the_ttl_from_its_eta():
    """A scheduled job that found the repository busy is published again with a countdown of up
    to 5 minutes: its lifetime must start when it is due, or a short TTL would refuse it."""
    t = task()
    eta = datetime.now(timezone.utc) + timedelta(seconds=300)
    assert stamped(t, ttl=60, eta=eta.isoformat())["expires"] == pytest.approx(eta.timestamp() + 60, abs=1)
    assert stamped(t, ttl=60, eta=None)["expires"] == pytest.approx(time.time() + 60, abs=1)


def test_the_records_live_in_a_state_folder_of_the_media_that_backups_and_restores_leave_alone(tmp_path):
    assert security.nonce_dir({"BACKUP_FILES_DIR": "/media"}) == "/media/.taiga-backup-state/nonces"
    assert security.nonce_dir({"BACKUP_FILES_DIR": "/media", "NONCE_DIR": "/state/n"}) == "/state/n"
    assert f"{os.path.realpath(tmp_path)}/{media.STATE}" in media.backup_excludes(str(tmp_path))
    assert media.is_ours(media.STATE)  # never moved by the switch, never taken from a snapshot
    (tmp_path / "upload.png").write_text("x")
    before = tree_state.take(str(tmp_path), skip=(media.STATE,))
    NonceFiles(str(tmp_path / media.STATE / "nonces"), TTL).first_seen(nonce(), time.time() + TTL)
    after = tree_state.take(str(tmp_path), skip=(media.STATE,))
    assert before.digest != after.digest  # the folder itself was made: the root changed, once
    whole = tree_state.take(str(tmp_path))
    NonceFiles(str(tmp_path / media.STATE / "nonces"), TTL).first_seen(nonce(), time.time() + TTL)
    assert tree_state.take(str(tmp_path), skip=(media.STATE,)).digest == after.digest  # a signed link ran
    assert tree_state.take(str(tmp_path)).digest != whole.digest  # what the backup would have seen


def test_a_request_for_another_instance_is_refused_and_one_naming_none_only_unsigned():
    t = task()
    body = ((), {}, {})
    security.stamp(body, {"task": t.name, "id": t.request.id}, TTL, "taiga-a")
    value = body[1][security.STAMP]
    security.check_instance(t, value, "taiga-a", signed=True)
    for signed in (True, False):
        with pytest.raises(security.RequestRefused, match="for instance 'taiga-a', this worker serves 'taiga-b'"):
            security.check_instance(t, value, "taiga-b", signed)
    unnamed = stamped(t)
    security.check_instance(t, unnamed, "taiga-b", signed=False)  # contract 1, signing off
    security.check_instance(t, None, "taiga-b", signed=False)     # a plain Celery bot, signing off
    with pytest.raises(security.RequestRefused, match="names no instance"):
        security.check_instance(t, unnamed, "taiga-b", signed=True)
