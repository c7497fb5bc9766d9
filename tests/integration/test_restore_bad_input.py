"""Bad restore requests and a broken environment: each ends FAILURE with a message saying what
was wrong, and the database, the files, the replica counts and the repositories are untouched."""

from __future__ import annotations

import os

import pytest

from testkit.site import NAMESPACE
from testkit.scenarios import run_backup
from testkit.scenarios import ALL_DEPLOYMENTS, add_odd_files, run_restore
from testkit.restore_checks import live_state as state

from worker.errors import JobFailed, RequestInvalid
from worker.jobs.requests import restore_request as validate_request

NOT_VALID = "is not valid; use latest, a backup id"
BAD_FIELDS = [
    ({"snapshot": "deadbeef; rm -rf /"}, "snapshot 'deadbeef; rm -rf /' " + NOT_VALID),
    ({"snapshot": "$(reboot)"}, "snapshot '$(reboot)' " + NOT_VALID),
    ({"snapshot": "`id`"}, "snapshot '`id`' " + NOT_VALID),
    ({"snapshot": "latest && true"}, "snapshot 'latest && true' " + NOT_VALID),
    ({"snapshot": "latest\n"}, "snapshot 'latest\\n' " + NOT_VALID),
    ({"snapshot": "../../etc/passwd"}, "snapshot '../../etc/passwd' " + NOT_VALID),
    ({"snapshot": "/etc/passwd"}, "snapshot '/etc/passwd' " + NOT_VALID),
    ({"snapshot": "deadbeef/../.."}, "snapshot 'deadbeef/../..' " + NOT_VALID),
    ({"snapshot": "-rf"}, "snapshot '-rf' starts with '-'"),
    ({"snapshot": "--help"}, "snapshot '--help' starts with '-'"),
    ({"snapshot": ""}, "snapshot must not be empty"),
    ({"snapshot": 123}, "snapshot must be a string, got int 123"),
    ({"snapshot": ["latest"]}, "snapshot must be a string, got list ['latest']"),
    ({"snapshot": {"id": "latest"}}, "snapshot must be a string, got dict"),
    ({"snapshot": True}, "snapshot must be a string, got bool True"),
    ({"snapshot": "DEADBEEF"}, "snapshot 'DEADBEEF' " + NOT_VALID),
    ({"snapshot": "a" * 65}, NOT_VALID),
    ({"snapshot": "1234567"}, "snapshot '1234567' " + NOT_VALID),
    ({"snapshot": "latest", "force": True}, "unknown argument(s) for taiga_backup.restore: 'force' (allowed: "
                                            "snapshot, before, safety_backup, dry_run, trigger)"),
    ({"snapshot": "latest", "before": "2020-01-01T00:00:00Z"}, "give snapshot or before, not both"),
    ({"before": "2999-01-01T00:00:00Z"}, "before 2999-01-01T00:00:00Z is in the future"),
    ({"before": "yesterday"}, "before 'yesterday' is not an ISO-8601 time"),
    ({"before": "2024-13-45T00:00:00Z"}, "before '2024-13-45T00:00:00Z' is not an ISO-8601 time"),
    ({"before": "2024-01-01;date"}, "before '2024-01-01;date' is not an ISO-8601 time"),
    ({"before": 1700000000}, "before must be an ISO-8601 time string, got int"),
    ({"safety_backup": "no"}, "safety_backup must be true or false, got 'no'"),
    ({"safety_backup": 0}, "safety_backup must be true or false, got 0"),
    ({"trigger": "schedule"}, "trigger must be one of manual, chat, got 'schedule'"),
]


@pytest.mark.parametrize("kwargs,message", BAD_FIELDS, ids=[repr(k)[:40] for k, _ in BAD_FIELDS])
def test_request_fields_are_checked_before_anything_runs(kwargs, message):
    with pytest.raises(RequestInvalid) as err:
        validate_request((), kwargs)
    assert message in str(err.value)


def test_positional_arguments_are_refused():
    with pytest.raises(RequestInvalid, match="keyword arguments only"):
        validate_request(("latest",), {})


def test_good_requests_pass():
    assert validate_request((), {}).snapshot is None
    assert validate_request((), {"snapshot": None, "safety_backup": False, "trigger": "chat"}).safety_backup is False
    for snapshot in ("latest", "20240131T231000Z", "legacy-20240131T231000Z", "deadbeef", "0" * 64):
        assert validate_request((), {"snapshot": snapshot}).snapshot == snapshot
    for before in ("2024-01-31", "2024-01-31 23:10", "2024-01-31T23:10:00+01:00", "2024-01-31T23:10:00.5Z"):
        assert validate_request((), {"before": before}).before.tzinfo is not None


def everything(site) -> dict:
    """Database, files, replica counts and their history, the repositories' snapshot files."""
    return {"state": state(site), "replicas": site.replicas(),
            "history": {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS},
            "snapshots": {r: sorted(os.listdir(site.repo / r / "snapshots")) for r in ("files", "pg-database")}}


def test_every_refused_restore_touches_nothing(site, monkeypatch, tmp_path):
    add_odd_files(site.media)
    made = run_backup()
    site.media.joinpath("added since.txt").write_text("must survive a refused restore")
    untouched = everything(site)
    assert all(untouched["snapshots"].values())
    first = made["backup_id"]

    def refused(message, **kwargs):
        with pytest.raises(JobFailed) as err:
            run_restore(**kwargs)
        assert message in str(err.value), str(err.value)
        assert everything(site) == untouched

    for kwargs, message in BAD_FIELDS:
        refused(message, **kwargs)
    refused("choose: no backup or snapshot 'deadbeef' in the files or pg-database repository", snapshot="deadbeef")
    refused("choose: no backup or snapshot '20000101T000000Z'", snapshot="20000101T000000Z")
    refused("choose: no backup at or before 2000-01-01T00:00:00Z: the first backup is " + first,
            before="2000-01-01T00:00:00Z")

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", str(wrong))
    refused("choose: the password in RESTIC_PASSWORD_FILE does not open repository files")
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", str(site.password_file))
    monkeypatch.setenv("RESTIC_REPOSITORY", str(tmp_path / "nowhere"))
    refused(f"choose: repository files does not exist at {tmp_path / 'nowhere'}/files")
    monkeypatch.setenv("RESTIC_REPOSITORY", str(site.repo))
    monkeypatch.setenv("POSTGRES_HOST", "127.0.0.1:1")
    refused("validate: cannot reach PostgreSQL at 127.0.0.1:1")
    monkeypatch.setenv("POSTGRES_HOST", f"127.0.0.1:{site.pg.port}")
    site.pg.sql(f"alter role {site.db_user} nocreatedb")
    try:
        refused(f'validate: role "{site.db_user}" on 127.0.0.1:{site.pg.port} may not create databases: a restore '
                f'loads the backup into a new database beside "{site.dbname}" (ALTER ROLE "{site.db_user}" CREATEDB)')
    finally:
        site.pg.sql(f"alter role {site.db_user} createdb")
    other = f"owner_{site.dbname}"
    site.pg.sql(f"create role {other}")
    site.pg.sql(f"alter database {site.dbname} owner to {other}")
    try:
        refused(f'is not the owner of database "{site.dbname}" (owned by "{other}"): renaming it needs the owner '
                f'(ALTER DATABASE "{site.dbname}" OWNER TO "{site.db_user}", or GRANT "{other}" TO "{site.db_user}")')
    finally:
        site.pg.sql(f"alter database {site.dbname} owner to {site.db_user}")
        site.pg.sql(f"drop role {other}")
    for files_dir in ("/", "/etc", "/usr/", "/var/lib", "/root"):
        monkeypatch.setenv("BACKUP_FILES_DIR", files_dir)
        refused(f"validate: BACKUP_FILES_DIR is {files_dir.rstrip('/') or '/'}, a system directory")
    unmarked = tmp_path / "someones-home"
    unmarked.mkdir()
    (unmarked / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("BACKUP_FILES_DIR", str(unmarked))
    refused(f"validate: BACKUP_FILES_DIR {unmarked} is neither a mount point nor marked as Taiga's media")
    assert [p.name for p in unmarked.iterdir()] == ["thesis.tex"]
    monkeypatch.setenv("BACKUP_FILES_DIR", str(site.media))
    monkeypatch.setenv("RESTORE_QUIESCE_DEPLOYMENTS", "taiga-back-deployment,taiga-nonexistent-deployment")
    refused("validate: deployments/scale/taiga-nonexistent-deployment not found in namespace taiga")
