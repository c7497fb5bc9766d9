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


def test_app_is_down_for_the_consistency_point_and_back_while_the_dump_streams(site):
    """pg_dump is held on a table lock after it imported the snapshot exported while quiesced:
    the app comes back while it waits."""
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
                back = all(site.kube.replicas(NAMESPACE, n) == c for n, c in BACKUP_DEPLOYMENTS.items())
                if row[0] and back and "taiga-backup/original-replicas" not in site.kube.annotations(
                        NAMESPACE, "taiga-gateway-deployment"):
                    seen.append({n: len(site.kube.pods(NAMESPACE, n, include_terminating=False))
                                 for n in BACKUP_DEPLOYMENTS})
                    holder.execute("rollback")
                    return
                time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    report = run_backup()
    t.join()
    holder.close()
    assert seen == [BACKUP_DEPLOYMENTS], "the app was not back while pg_dump waited"
    history = site.kube.history(NAMESPACE, "taiga-gateway-deployment")
    assert [r for _, r in history] == [1, 0, 1]
    assert report["state"] == "SUCCESS"
    assert report["downtime_seconds"] < report["duration_seconds"]


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


def test_restic_dying_first_in_the_pipe_is_the_error_reported_not_pg_dumps_broken_pipe(site, tmp_path):
    """restic fails (a wrong password) while pg_dump still has 100 MB to write: pg_dump then dies on
    the closed pipe, and that is not the cause an operator needs to read."""
    from worker.adapters import postgres
    from worker.adapters.restic import Repository, ResticError

    with psycopg.connect(site.conninfo, autocommit=True) as conn:
        conn.execute("create table zz_attachments (id int, payload text)")
        conn.execute("insert into zz_attachments select g, repeat(md5(g::text), 3200) from generate_series(1, 1000) g")
    settings = site.settings()
    good = Repository(str(tmp_path / "repo"), str(site.password_file), host="taiga-backup")
    good.init_if_missing()
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    repo = Repository(str(tmp_path / "repo"), str(wrong), host="taiga-backup")
    with pytest.raises(ResticError) as err:
        repo.backup_pipe(postgres.dump_argv(settings), postgres.client_env(settings), ["t"], producer_what="pg_dump")
    assert err.value.kind == "wrong-password", str(err.value)
    assert str(err.value).startswith("restic backup --stdin (repo) failed")
    assert "Broken pipe" not in str(err.value) and "pg_dump" not in str(err.value)


def test_a_stream_held_up_by_restic_at_the_deadline_names_restic_not_the_producer(tmp_path):
    """restic waits on a repository endpoint that accepts and never answers (as a dead S3 endpoint
    behind a load balancer does) while the producer fills the pipe: at the deadline both are
    killed, and restic is named - the producer only waited for it, whatever restic printed."""
    import socket

    from worker.adapters import process
    from worker.adapters.restic import Repository, ResticError

    silent = socket.create_server(("127.0.0.1", 0))
    try:
        password = tmp_path / "password"
        password.write_text("pw\n")
        repo = Repository(f"rest:http://127.0.0.1:{silent.getsockname()[1]}/repo", str(password),
                          host="taiga-backup", name="silent")
        with pytest.raises(ResticError) as err:
            repo.backup_pipe(["yes"], process.child_env(), ["t"], producer_what="pg_dump", timeout=3)
    finally:
        silent.close()
    assert str(err.value).startswith("restic backup --stdin (silent) did not finish before its deadline"), str(err.value)
    assert "pg_dump" not in str(err.value)
