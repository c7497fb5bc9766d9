"""Fast unit tests of the pieces with no server behind them (fakeredis for the lease)."""

from __future__ import annotations

import time

import fakeredis
import pytest

import beat_schedule
from worker.adapters import process
from worker import redact
from worker.backups.catalog import pair
from worker.jobs.lease import JobBusy, JobLock
from worker.settings import Settings, SettingsError


@pytest.fixture
def env(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t-restic\n")
    return {"RESTIC_REPOSITORY": str(tmp_path / "repo"), "RESTIC_PASSWORD_FILE": str(pw)}


@pytest.mark.parametrize("name,value,words", [
    ("RESTIC_REPOSITORY", "", "RESTIC_REPOSITORY must be set"),
    ("POSTGRES_PORT", "54x", "POSTGRES_PORT: invalid port"),
    ("QUIESCE_DEPLOYMENTS", "ok-name,Bad_Name", "QUIESCE_DEPLOYMENTS: 'Bad_Name'"),
    ("PG_DUMP_FORMAT", "tar", "PG_DUMP_FORMAT: expected plain or custom"),
    ("BACKUP_TIMEZONE", "Mars/Olympus", "BACKUP_TIMEZONE: unknown time zone"),
    ("RESTORE_CHOWN", "taiga", "RESTORE_CHOWN: expected UID:GID"),
    ("JOB_LOCK_LEASE", "1", "JOB_LOCK_LEASE: must be at least 5"),
    ("POSTGRES_DB", "taiga; drop", "POSTGRES_DB"),
    ("POSTGRES_PASSWORD_FILE", "/nonexistent/pw", "POSTGRES_PASSWORD_FILE: cannot read /nonexistent/pw"),
])
def test_invalid_settings_name_the_variable(env, name, value, words):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({**env, name: value})
    assert words in str(err.value)


def test_settings_defaults_follow_the_old_procedure(env):
    s = Settings.from_env({**env, "POSTGRES_HOST": "postgresql-service:5433"})
    assert (s.pg_host, s.pg_port) == ("postgresql-service", 5433)
    assert s.quiesce_deployments == ("taiga-gateway-deployment", "taiga-front-deployment")
    assert "taiga-back-deployment" in s.restore_quiesce_deployments
    assert s.repo_url("files") == env["RESTIC_REPOSITORY"] + "/files"
    assert s.files_dir == "/media" and s.restore_chown == "999:999"
    assert Settings.from_env({**env, "QUIESCE_DEPLOYMENTS": ""}).quiesce_deployments == ()
    # POSTGRES_SERVICE/PORT win over POSTGRES_HOST, as the seed sets all three
    s = Settings.from_env({**env, "POSTGRES_HOST": "a:1", "POSTGRES_SERVICE": "b", "POSTGRES_PORT": "2"})
    assert (s.pg_host, s.pg_port) == ("b", 2)


def test_secrets_never_print_themselves(env, tmp_path):
    (tmp_path / "db").write_text("db-pass-123\n")
    s = Settings.from_env({**env, "POSTGRES_PASSWORD_FILE": str(tmp_path / "db"),
                           "AWS_SECRET_ACCESS_KEY": "aws-secret-456"})
    assert "db-pass-123" not in repr(s) and "aws-secret-456" not in repr(s)
    assert s.pg_password.reveal() == "db-pass-123"
    assert set(s.secrets()) >= {"db-pass-123", "aws-secret-456", "s3cr3t-restic"}


def test_redact_scrubs_registered_secrets_and_url_passwords():
    redact.register("hunter2-long")
    text = redact.redact("auth failed for hunter2-long at redis://:p4ss@host:6379/0")
    assert "hunter2-long" not in text and "p4ss" not in text and "***" in text


def test_pipe_reports_both_ends_and_stderr():
    env = process.child_env()
    prod, cons = process.pipe(["sh", "-c", "echo partial; echo boom >&2; exit 3"], ["cat"],
                              producer_env=env, consumer_env=env)
    assert (prod.returncode, cons.returncode) == (3, 0)
    assert cons.stdout == b"partial\n"
    assert "boom" in str(prod.error()) and "exit status 3" in str(prod.error())


def test_run_kills_at_the_deadline():
    t0 = time.monotonic()
    done = process.run(["sleep", "30"], env=process.child_env(), timeout=0.5)
    assert done.timed_out and time.monotonic() - t0 < 5
    assert "deadline" in str(done.error())


def test_run_refuses_a_shell_string():
    with pytest.raises(TypeError):
        process.run("echo hi", env=process.child_env())


def test_child_env_is_minimal(monkeypatch):
    monkeypatch.setenv("POSTGRES_PASSWORD", "leak-me")
    env = process.child_env({"ONLY": "this"})
    assert "POSTGRES_PASSWORD" not in env and env["ONLY"] == "this"


def test_job_lease_refuses_a_second_holder_and_expires_when_the_holder_dies():
    server = fakeredis.FakeServer()
    first = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    second = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/taiga", lease_seconds=5)
    other_repo = JobLock(fakeredis.FakeRedis(server=server), "s3:bucket/other", lease_seconds=5)
    first.acquire("backup", "task-1")
    with pytest.raises(JobBusy) as err:
        second.acquire("restore", "task-2")
    assert "backup task task-1" in str(err.value)
    other_repo.acquire("backup", "task-3")  # another repository is independent
    other_repo.release()
    first._stop.set()  # the holder "dies": no more renewals
    first.redis.expire(first.key, 1)
    time.sleep(1.2)
    second.acquire("restore", "task-2")
    assert second.holder()["task_id"] == "task-2"
    second.release()
    assert second.holder() is None and second.active() is None


def _snap(id_, time_, tags=None, host="h"):
    return {"id": id_ * 8, "short_id": id_ * 8, "time": time_, "tags": tags, "hostname": host, "paths": ["/x"]}


def test_backups_pair_by_tag_and_legacy_snapshots_by_nearest_time():
    files = [_snap("a", "2026-01-01T23:10:40.123456789Z"), _snap("b", "2026-01-02T23:11:00Z"),
             _snap("c", "2026-01-03T23:10:05Z", ["taiga-backup", "backup-id=20260103T231000Z", "kind=schedule"])]
    db = [_snap("d", "2026-01-01T23:10:01Z"), _snap("e", "2026-01-02T23:10:02Z"),
          _snap("f", "2026-01-03T23:10:03Z", ["taiga-backup", "backup-id=20260103T231000Z", "kind=schedule"])]
    backups = pair(files, db)
    assert [b.id for b in backups] == ["legacy-20260101T231001Z", "legacy-20260102T231002Z", "20260103T231000Z"]
    assert backups[0].snapshot_ids() == {"files": "a" * 8, "pg-database": "d" * 8}
    assert backups[1].snapshot_ids() == {"files": "b" * 8, "pg-database": "e" * 8}
    assert backups[2].kind == "schedule" and backups[2].complete and backups[2].tagged


def test_half_backup_is_listed_incomplete():
    backups = pair([], [_snap("f", "2026-01-03T23:10:03Z", ["backup-id=20260103T231000Z"])])
    assert not backups[0].complete


def test_beat_schedule_from_settings():
    schedule = beat_schedule.build_schedule({"BACKUP_SCHEDULE": "*/5 * * * *", "CHECK_SCHEDULE": "off"})
    assert schedule["backup"]["task"] == "taiga_backup.backup"
    assert "check" not in schedule and "prune" in schedule and "reconcile" in schedule
    assert schedule["backup"]["schedule"].minute == set(range(0, 60, 5))
    default = beat_schedule.build_schedule({})
    assert default["backup"]["schedule"].hour == {23} and default["backup"]["schedule"].minute == {10}
    with pytest.raises(SettingsError):
        beat_schedule.build_schedule({"PRUNE_SCHEDULE": "every night"})


def test_a_job_waits_briefly_behind_the_reconciler_but_not_behind_a_job():
    import threading

    server = fakeredis.FakeServer()
    reconciler = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    job = JobLock(fakeredis.FakeRedis(server=server), "repo", lease_seconds=5)
    reconciler.acquire("reconcile", "r-1")
    threading.Timer(0.5, reconciler.release).start()
    t0 = time.monotonic()
    job.acquire("backup", "b-1", patience=10)
    assert 0.4 < time.monotonic() - t0 < 5
    with pytest.raises(JobBusy):
        reconciler.acquire("reconcile", "r-2")  # a reconciler never waits behind a job
    job.release()


def test_only_the_restore_itself_marks_a_backup_pre_restore():
    """A pre-restore backup is hidden from `latest` and `before`: a message must not set it."""
    from worker.errors import RequestInvalid
    from worker.jobs import requests

    with pytest.raises(RequestInvalid, match="trigger must be one of manual, schedule, chat"):
        requests.keyword_fields(requests.BACKUP, (), {"trigger": "pre-restore"}, {})
    assert requests.keyword_fields(requests.BACKUP, (), {"trigger": "chat"}, {}) == {"trigger": "chat"}


def _status(total_files, total, done):
    return {"message_type": "status", "total_files": total_files, "total_bytes": total, "bytes_done": done}


def test_the_pre_pass_end_is_seen_only_once_the_scan_settled_and_within_the_lead():
    from worker.backups.backup_eta import BackupEta

    clock = [0.0]
    eta = BackupEta(lead=1.0, clock=lambda: clock[0])
    # restic still scanning: totals grow, so however near done looks, it is not the end
    for i in range(1, 40):
        clock[0] = i * 0.1
        eta(_status(i * 100, i * 10_000_000, i * 10_000_000 - 1_000_000))
    assert not eta.near.is_set()
    # totals stand still, 100 MB/s: 1 s left (the lead) at 93 %, restic's finish included
    total, done = 1_000_000_000, 600_000_000
    for i in range(40, 80):
        clock[0] = i * 0.1
        done += 10_000_000
        eta(_status(5000, total, done))
        if done <= 900_000_000:
            assert not eta.near.is_set(), (done, eta.remaining)
    assert eta.near.is_set() and abs(eta.near_at - 7.2) < 0.05, eta.near_at
    assert 0.9 <= eta.remaining <= 1.0
    # with last night's file count, the whole tree is known scanned at once: no settling wait
    clock[0] = 0.0
    known = BackupEta(lead=1.0, expected_files=5000, clock=lambda: clock[0])
    for i, done in enumerate(range(900_000_000, 960_000_000, 10_000_000)):
        clock[0] = i * 0.1
        known(_status(5000, total, done))
    assert known.near.is_set() and known.near_at <= 0.4
    never = BackupEta(lead=0.0, clock=lambda: clock[0])
    never(_status(5000, total, total))
    assert not never.near.is_set()


def test_a_tree_state_changes_with_any_write_rename_chmod_or_link_and_fresh_trees_are_racy(tmp_path):
    import os

    from worker.backups import tree_state

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"one")
    os.symlink("d/a.bin", tmp_path / "link")
    old = time.time() - 10
    for path in (tmp_path / "d" / "a.bin", tmp_path / "d", tmp_path):
        os.utime(path, (old, old), follow_symlinks=False)
    first = tree_state.take(str(tmp_path))
    assert first.racy  # utime itself stamped the ctimes just now
    assert tree_state.take(str(tmp_path)).digest == first.digest

    def changed(change) -> bool:
        before = tree_state.take(str(tmp_path))
        time.sleep(0.01)
        change()
        return tree_state.take(str(tmp_path)).digest != before.digest

    assert changed(lambda: (tmp_path / "d" / "a.bin").write_bytes(b"two"))  # same size, new bytes
    assert changed(lambda: os.chmod(tmp_path / "d" / "a.bin", 0o600))
    assert changed(lambda: os.rename(tmp_path / "d" / "a.bin", tmp_path / "d" / "b.bin"))
    assert changed(lambda: (os.unlink(tmp_path / "link"), os.symlink("d/b.bin", tmp_path / "link")))
    assert changed(lambda: (tmp_path / "d" / "new").mkdir())
    quiet = tree_state.TreeState(first.digest, first.taken_ns, first.taken_ns - 3_000_000_000)
    assert not quiet.racy and tree_state.unchanged(quiet, first) and not tree_state.unchanged(first, first)
