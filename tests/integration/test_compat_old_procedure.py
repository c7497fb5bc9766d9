"""Compatibility with the old shell procedure, both ways, with the seed's own commands
(testkit.old_procedure): repositories it wrote restore with taiga-backup, and taiga-backup's plain
backups restore with its restore steps."""

from __future__ import annotations

import os

from testkit.old_procedure import old_backup, old_init, old_restore
from testkit.scenarios import run_backup, snapshots
from testkit.scenarios import add_odd_files, change_everything, run_restore
from testkit.restore_checks import KEPT_PREFIX, live_state as state

from worker.backups import catalog, selection


def old_settings(site) -> tuple[dict, dict]:
    env = {"RESTIC_PASSWORD_FILE": str(site.password_file), "RESTIC_CACHE_DIR": site.env["RESTIC_CACHE_DIR"],
           "HOME": str(site.root)}
    db = {"host": "127.0.0.1", "port": site.pg.port, "user": site.db_user, "password": site.db_password,
          "dbname": site.dbname}
    return env, db


def test_repositories_written_by_the_old_procedure_restore_with_taiga_backup(site, monkeypatch):
    monkeypatch.setenv("RESTORE_CHOWN", "999:999")  # the default, as the old procedure's chown -R
    env, db = old_settings(site)
    add_odd_files(site.media)
    old_init(str(site.repo), env)
    before = state(site)
    made = old_backup(str(site.repo), str(site.media), db, env)
    files_snap, db_snap = snapshots(site, "files")[0], snapshots(site, "pg-database")[0]
    assert files_snap["paths"] == [str(site.media)] and db_snap["paths"] == ["/stdin"]  # the seed's layout
    assert not files_snap.get("tags") and not db_snap.get("tags")
    legacy = selection.choose(catalog.list_backups(site.settings()))
    assert legacy.kind == "legacy" and legacy.snapshot_ids() == {"files": files_snap["id"],
                                                                 "pg-database": db_snap["id"]}
    change_everything(site)

    # by the old database snapshot's short id: its files partner is found by time
    report = run_restore(snapshot=made["snapshots"]["db"])

    assert report["backup_id"] == legacy.id and report["snapshots"] == legacy.snapshot_ids()
    assert report["database"]["format"] == "plain"
    assert state(site) == before
    assert report["safety_backup"]["backup_id"]  # tagged snapshots now live next to the old ones
    assert report["files"]["chown"] == "999:999"
    kept = site.media / (KEPT_PREFIX + report["restore_id"])  # the previous state, owners as they were
    assert {(os.lstat(os.path.join(d, n)).st_uid, os.lstat(os.path.join(d, n)).st_gid)
            for d, dirs, files in os.walk(site.media) for n in dirs + files
            if not os.path.join(d, n).startswith(str(kept))} == {(999, 999)}


def test_plain_backups_of_taiga_backup_restore_with_the_old_procedure(site, monkeypatch):
    monkeypatch.setenv("PG_DUMP_FORMAT", "plain")
    env, db = old_settings(site)
    add_odd_files(site.media)
    before = state(site)
    run_backup()
    change_everything(site)

    result = old_restore(str(site.repo), str(site.media), db, env, chown="999:999")

    assert result["psql_errors"] == []
    assert state(site) == before
