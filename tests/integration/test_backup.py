"""The backup chain against real PostgreSQL, real restic, the Kubernetes API double and Redis."""

from __future__ import annotations

import subprocess
import threading
import time

import psycopg
import pytest

from testkit import dataset
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE

from testkit.scenarios import run_backup, snapshots
from worker.errors import JobFailed


def load_dump_into(site, snapshot_id: str, dbname: str) -> None:
    """Plain restic + psql, independent of our restore code."""
    site.pg.create_app_db(dbname, site.db_user, site.db_password)
    dump = site.restic("pg-database", "dump", snapshot_id, "stdin").stdout
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-o", "/dev/null",
                    site.conninfo.replace(f"dbname={site.dbname}", f"dbname={dbname}")],
                   input=dump, check=True, capture_output=True)


def test_backup_snapshots_restore_to_the_same_bytes_with_plain_restic(site, tmp_path):
    before_files = dataset.tree_digest(str(site.media))
    before_db = dataset.table_checksums(site.conninfo)
    assert before_files and before_db

    report = run_backup()

    assert report["state"] == "SUCCESS"
    files_id, db_id = report["snapshots"]["files"], report["snapshots"]["pg-database"]
    # the seed's layout: files backed up as "." from inside the media dir, the dump as "stdin"
    files_snap = [s for s in snapshots(site, "files") if s["id"] == files_id][0]
    db_snap = [s for s in snapshots(site, "pg-database") if s["id"] == db_id][0]
    assert files_snap["paths"] == [str(site.media)]
    assert db_snap["paths"] == ["/stdin"]
    assert files_snap["hostname"] == db_snap["hostname"] == "taiga-backup"
    tag = f"backup-id={report['backup_id']}"
    assert tag in files_snap["tags"] and tag in db_snap["tags"]

    target = tmp_path / "restored"
    site.restic("files", "restore", files_id, "--target", str(target))
    assert dataset.tree_digest(str(target)) == before_files

    load_dump_into(site, db_id, site.dbname + "_copy")
    copy_conninfo = site.conninfo.replace(f"dbname={site.dbname}", f"dbname={site.dbname}_copy")
    assert dataset.table_checksums(copy_conninfo) == before_db

    assert report["bytes_added"]["total"] > 0
    assert set(report["steps"]) >= {"preflight", "quiesce", "dump_db", "restic_backup", "resume"}
    assert all(step["ok"] for step in report["steps"].values())
    assert report["deployments"] == BACKUP_DEPLOYMENTS
    assert report["downtime_seconds"] > 0


def test_app_is_at_zero_while_the_dump_runs_and_back_afterwards(site):
    """pg_dump is held on a table lock; while it waits, we look at the deployments."""
    seen: list[dict] = []
    holder = psycopg.connect(site.pg.admin_conninfo(site.dbname))
    holder.execute("begin")
    holder.execute("lock table projects_project in access exclusive mode")

    def watch():
        with psycopg.connect(site.pg.admin_conninfo(), autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = conn.execute("select count(*) from pg_stat_activity where datname=%s and query ilike 'LOCK TABLE%%'"
                                   " and wait_event_type='Lock'", (site.dbname,)).fetchone()
                if row[0]:
                    seen.append({n: site.kube.replicas(NAMESPACE, n) for n in BACKUP_DEPLOYMENTS})
                    seen.append({n: len(site.kube.pods(NAMESPACE, n)) for n in BACKUP_DEPLOYMENTS})
                    holder.execute("rollback")
                    return
                time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    report = run_backup()
    t.join()
    holder.close()
    assert seen, "pg_dump was never seen waiting"
    assert seen[0] == {n: 0 for n in BACKUP_DEPLOYMENTS}   # scaled to 0 ...
    assert seen[1] == {n: 0 for n in BACKUP_DEPLOYMENTS}   # ... and every pod gone before the dump
    for name, count in BACKUP_DEPLOYMENTS.items():
        assert site.kube.replicas(NAMESPACE, name) == count
        dep_pods = [p for p in site.kube.pods(NAMESPACE, name, include_terminating=False)]
        assert len(dep_pods) == count
        assert "taiga-backup/original-replicas" not in site.kube.annotations(NAMESPACE, name)
    assert report["state"] == "SUCCESS"


def test_missing_database_fails_clearly_before_touching_the_app(site, monkeypatch):
    monkeypatch.setenv("POSTGRES_DB", "no_such_db")
    before = site.replicas()
    with pytest.raises(JobFailed) as err:
        run_backup()
    assert str(err.value) == f'preflight: database "no_such_db" does not exist on 127.0.0.1:{site.pg.port}'
    assert site.replicas() == before
    assert [r for _, r in site.kube.history(NAMESPACE, "taiga-gateway-deployment")] == [1]
    assert not (site.repo / "pg-database").exists()  # failed before anything was written


def test_dump_failing_midway_resumes_the_app_and_leaves_no_snapshot(site):
    """A table the backup user may not read makes pg_dump fail after the app was quiesced."""
    site.pg.sql("create table secret_stuff (id int); insert into secret_stuff values (1)", dbname=site.dbname)
    before = site.replicas()
    with pytest.raises(JobFailed) as err:
        run_backup()
    assert "pg_dump" in str(err.value) and "permission denied" in str(err.value)
    assert site.replicas() == before
    history = site.kube.history(NAMESPACE, "taiga-gateway-deployment")
    assert [r for _, r in history] == [1, 0, 1]
    assert snapshots(site, "pg-database") == []
    assert snapshots(site, "files") == []  # the half backup was discarded too
