"""worker/settings.py read from an environment: a bad value names its variable, the defaults are the
old procedure's, and a secret never shows itself in a repr."""

from __future__ import annotations

import pytest

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
