"""worker/settings.py read from an environment: a bad value names its variable, the defaults are the
old procedure's, a secret never shows itself in a repr, and BACKUP_WINDOW moves the backup's cron."""

from __future__ import annotations

import pytest

from worker.settings import Settings, SettingsError, backup_cron, instance_offset, read, shift_cron


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


# -- BACKUP_WINDOW: the nightly backup moved by a stable per-instance offset ------------------------

NAMES = [f"taiga-{n}" for n in range(20)]


def test_no_window_is_the_schedule_unchanged():
    assert read("BACKUP_WINDOW", {}) == 0
    for env in ({}, {"BACKUP_WINDOW": "0"}, {"BACKUP_WINDOW": "off"}):
        assert backup_cron({**env, "TAIGA_INSTANCE": "taiga-b"}) == "10 23 * * *"
    assert backup_cron({"BACKUP_SCHEDULE": "*/30 * * 1 0", "TAIGA_INSTANCE": "x"}) == "*/30 * * 1 0"
    assert backup_cron({"BACKUP_SCHEDULE": "off", "BACKUP_WINDOW": "2h", "TAIGA_INSTANCE": "x"}) is None


@pytest.mark.parametrize("raw,minutes", [("2h", 120), ("90m", 90), ("1h30m", 90), ("24h", 1440), ("1m", 1)])
def test_window_durations(raw, minutes):
    assert read("BACKUP_WINDOW", {"BACKUP_WINDOW": raw}) == minutes


@pytest.mark.parametrize("raw", ["90", "2 h", "1d", "30s", "h", "25h", "-1h"])
def test_bad_windows_name_the_variable(raw):
    with pytest.raises(SettingsError, match="BACKUP_WINDOW"):
        read("BACKUP_WINDOW", {"BACKUP_WINDOW": raw})


def test_offsets_are_stable_inside_the_window_and_spread():
    offsets = [instance_offset(name, 120) for name in NAMES]
    assert all(0 <= o < 120 for o in offsets)
    assert offsets == [instance_offset(name, 120) for name in NAMES]  # a pure function of the name
    # sha256, not hash(): the same in another process (PYTHONHASHSEED differs per process)
    assert instance_offset("taiga", 120) == 20 and instance_offset("taiga-b", 120) == 48
    assert len(set(offsets)) >= 15  # 20 names over 120 minutes: few collisions
    halves = sum(o < 60 for o in offsets)
    assert 5 <= halves <= 15, offsets  # both halves of the window used
    many = [instance_offset(f"i{n}", 120) for n in range(2400)]
    per_quarter = [sum(q * 30 <= o < (q + 1) * 30 for o in many) for q in range(4)]
    assert all(500 <= count <= 700 for count in per_quarter), per_quarter  # ~600 each: uniform


def test_the_start_is_the_schedule_plus_the_offset():
    for name in NAMES:
        env = {"BACKUP_WINDOW": "2h", "TAIGA_INSTANCE": name}
        minute, hour, *days = backup_cron(env).split()
        start = int(hour) * 60 + int(minute)
        assert days == ["*", "*", "*"]
        assert (start - (23 * 60 + 10)) % 1440 == instance_offset(name, 120)


def test_shifts_wrap_past_the_hour_and_midnight():
    assert shift_cron("10 23 * * *", 49) == "59 23 * * *"
    assert shift_cron("10 23 * * *", 50) == "0 0 * * *"
    assert shift_cron("10 23 * * *", 119) == "9 1 * * *"
    assert shift_cron("0 */6 * * *", 75) == "15 1,7,13,19 * * *"
    assert shift_cron("0 1,23 * * *", 90) == "30 0,2 * * *"
    assert shift_cron("45 * * * *", 30) == "15 * * * *"
    assert shift_cron("10 2 * * 0", 60) == "10 3 * * 0"  # within the day: the day fields stay right


def test_a_schedule_the_window_cannot_move_is_refused_for_every_instance():
    """Refused by the window's last minute, not the instance's offset: an instance whose offset
    happens to fit would otherwise start, and its neighbour with the same settings would not."""
    with pytest.raises(SettingsError, match="names one minute"):
        backup_cron({"BACKUP_SCHEDULE": "*/30 * * * *", "BACKUP_WINDOW": "10m", "TAIGA_INSTANCE": "x"})
    late_sunday = {"BACKUP_SCHEDULE": "10 23 * * 0", "BACKUP_WINDOW": "2h"}
    assert instance_offset("taiga", 120) < 50  # this one would fit ...
    with pytest.raises(SettingsError, match="pass midnight"):
        backup_cron({**late_sunday, "TAIGA_INSTANCE": "taiga"})  # ... and is refused all the same
    assert backup_cron({**late_sunday, "BACKUP_WINDOW": "50m", "TAIGA_INSTANCE": "taiga"}).endswith(" * * 0")


def test_the_worker_refuses_to_start_with_such_a_window(env):
    with pytest.raises(SettingsError, match="BACKUP_WINDOW"):
        Settings.from_env({**env, "BACKUP_SCHEDULE": "10 23 1 * *", "BACKUP_WINDOW": "1h"})
