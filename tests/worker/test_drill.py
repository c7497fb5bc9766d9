"""Restore drill (`taiga_backup.verify`) against real PostgreSQL and restic, and the upkeep jobs
fired by Celery beat in a real worker."""

from __future__ import annotations

import json
import time

import pytest

from testkit import dataset
from testkit.site import NAMESPACE

from worker.jobs.backup_flow import take_backup
from worker.jobs.verify_flow import verify_latest
from worker.errors import JobFailed
from worker.jobs.job import run_job
from worker.backups import dump_loader
from worker.adapters import postgres
from worker.adapters.redis_store import connect as redis_connect


def scratch_databases(site) -> list[str]:
    return [r[0] for r in site.pg.sql("select datname from pg_database where datname like 'taiga_backup_verify%'")]


def verify():
    return run_job(None, "verify", verify_latest)


@pytest.mark.parametrize("fmt,other_server", [("plain", False), ("custom", True)],
                         ids=["plain-dump-same-server", "custom-dump-configured-server"])
def test_verify_restores_the_latest_backup_aside_and_cleans_up(repos, monkeypatch, tmp_path, fmt, other_server):
    site = repos
    monkeypatch.setenv("PG_DUMP_FORMAT", fmt)
    monkeypatch.setenv("VERIFY_DIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    if other_server:  # the same cluster, but reached through the VERIFY_POSTGRES_* settings as its superuser
        (site.secrets / "verify-pw").write_text(site.pg.superuser_password)
        monkeypatch.setenv("VERIFY_POSTGRES_HOST", f"127.0.0.1:{site.pg.port}")
        monkeypatch.setenv("VERIFY_POSTGRES_USER", site.pg.superuser)
        monkeypatch.setenv("VERIFY_POSTGRES_PASSWORD_FILE", str(site.secrets / "verify-pw"))
    older = run_job(None, "backup", lambda job: take_backup(job, "manual")) if fmt == "plain" else None
    dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=7, fraction=0.2)
    latest = run_job(None, "backup", lambda job: take_backup(job, "manual"))
    live_rows = postgres.table_row_counts(site.settings())
    live_sums = dataset.table_checksums(site.conninfo)
    history = {n: site.kube.history(NAMESPACE, n) for n in site.replicas()}

    report = verify()

    assert report["state"] == "SUCCESS"
    assert report["backup_id"] == latest["backup_id"] != (older or {}).get("backup_id")
    assert report["snapshots"] == latest["snapshots"]
    db = report["database"]
    assert db["format"] == fmt and db["row_counts"] == live_rows and db["rows"] == sum(live_rows.values()) > 0
    on_disk = dataset.tree_digest(str(site.media))
    assert report["files"]["files"] == len(on_disk) > 0
    assert report["files"]["bytes"] == sum(p.stat().st_size for p in site.media.rglob("*") if p.is_file())
    # nothing left behind, nothing live touched
    assert scratch_databases(site) == [] and list((tmp_path / "scratch").iterdir()) == []
    assert dataset.table_checksums(site.conninfo) == live_sums
    assert {n: site.kube.history(NAMESPACE, n) for n in site.replicas()} == history


HANDMADE_DUMP = b"""
CREATE TABLE public.widgets (id integer PRIMARY KEY, name text);
CREATE FUNCTION public.drop_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END $$;
CREATE TRIGGER drop_two BEFORE INSERT ON public.widgets FOR EACH ROW EXECUTE FUNCTION public.drop_two();
COPY public.widgets (id, name) FROM stdin;
1\tone
2\ttwo\\nlines
3\tthree
\\.
-- PostgreSQL database dump complete
"""


def test_verify_fails_when_the_backup_does_not_load_as_dumped_and_still_cleans_up(repos, tmp_path, monkeypatch):
    """A dump whose rows do not all arrive (a trigger swallows one) must fail the drill."""
    site = repos
    monkeypatch.setenv("VERIFY_DIR", str(tmp_path / "scratch"))
    leftover_dir = tmp_path / "scratch" / "taiga-backup-verify-crashed"
    leftover_dir.mkdir(parents=True)
    site.pg.sql(f"create database taiga_backup_verify_crashed owner {site.db_user}")
    site.pg.sql("create database taiga_backup_verify_not_ours")  # same prefix, someone else's: left alone
    tags = ["--tag", "backup-id=20250101T000000Z", "--tag", "kind=manual", "--host", "taiga-backup"]
    site.restic("pg-database", "backup", *tags, "--stdin", input=HANDMADE_DUMP)
    site.restic("files", "backup", *tags, str(site.media))

    with pytest.raises(JobFailed) as err:
        verify()

    assert str(err.value) == ('database: 1 table(s) differ from the dump: '
                              'table public.widgets: backup 3, restored 2 rows')
    stored = json.loads(redis_connect(site.settings()).get("taiga-backup:taiga:last:verify:failure"))
    assert stored["steps"]["files"]["ok"] is True  # the files part still ran and passed
    assert sorted(stored["steps"]["prepare"]["removed_leftovers"]) == sorted(
        ["taiga_backup_verify_crashed", str(leftover_dir)])
    assert scratch_databases(site) == ["taiga_backup_verify_not_ours"]
    assert list((tmp_path / "scratch").iterdir()) == []
    site.pg.sql("drop database taiga_backup_verify_not_ours")


def test_verify_without_a_complete_backup_fails_clearly(repos):
    with pytest.raises(JobFailed) as err:
        verify()
    assert str(err.value) == "prepare: there is no complete backup (files and database) to verify"


def test_dump_row_counter_follows_copy_sections():
    rows = dump_loader.PlainWatch()
    for line in (b'COPY public."Odd Name" (a) FROM stdin;\n', b"x\n", b"y\n", b"\\.\n",
                 b"COPY public.empty (a) FROM stdin;\n", b"\\.\n", b"SELECT 1;\n"):
        rows(line)
    assert rows.counts == {'public."Odd Name"': 2, "public.empty": 0}


@pytest.mark.slow
def test_prune_check_and_verify_run_from_the_schedule(repos, start_worker):
    """All three due every minute in one worker with beat: one holds the lease, the others come back."""
    site = repos
    run_job(None, "backup", lambda job: take_backup(job, "manual"))
    client = redis_connect(site.settings())
    client.delete(*[f"taiga-backup:taiga:last:{k}:success" for k in ("prune", "check", "verify")])
    worker = start_worker(beat=True, PRUNE_SCHEDULE="* * * * *", CHECK_SCHEDULE="* * * * *",
                          VERIFY_SCHEDULE="* * * * *", BACKUP_SCHEDULE="off")
    deadline = time.monotonic() + 150
    reports = {}
    while time.monotonic() < deadline and len(reports) < 3:
        for kind in ("prune", "check", "verify"):
            raw = client.get(f"taiga-backup:taiga:last:{kind}:success")
            if raw:
                reports[kind] = json.loads(raw)
        time.sleep(1)
    assert set(reports) == {"prune", "check", "verify"}, worker.output()[-4000:]
    assert {r["trigger"] for r in reports.values()} == {"schedule"}
    assert "retry: Retry in 5s" in worker.output()  # the lease was taken: came back instead of failing
    seen = {k.decode(): float(v) for k, v in client.hgetall("taiga-backup:workers").items()}
    assert seen and max(seen.values()) > time.time() - 60  # the worker's heartbeat for restic_locks
