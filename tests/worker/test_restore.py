"""Restore against real PostgreSQL, real restic, the Kubernetes API double and Redis: backup ->
change -> restore gives the same bytes; the safety backup undoes a restore; a failed restore
resumes the app and keeps the files; a plain Celery client runs it and reads JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import jsonschema
import psycopg
import pytest
import redis

from testkit import dataset
from testkit.site import NAMESPACE, ROOT
from testkit.restore_checks import kept_state, live_files, live_state as state, side_copies
from testkit.scenarios import (ALL_DEPLOYMENTS, add_odd_files, change_everything, run_backup,
                               run_restore, snapshots)

from worker.errors import JobFailed
from worker.backups import catalog, layout, media, selection

SNAPSHOT_PAIR = {"type": "object", "required": ["files", "pg-database"],
                 "properties": {"files": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                "pg-database": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}
RESULT_SCHEMA = {  # the documented result of taiga_backup.restore (README, "Restore")
    "type": "object",
    "required": ["job", "state", "task_id", "backup_id", "backup_time", "snapshots", "safety_backup", "database",
                 "files", "deployments", "downtime_seconds", "steps", "request", "started_at", "finished_at"],
    "properties": {
        "job": {"const": "restore"},
        "state": {"const": "SUCCESS"},
        "backup_id": {"type": "string", "pattern": r"^(legacy-)?\d{8}T\d{6}Z$"},
        "snapshots": SNAPSHOT_PAIR,
        "safety_backup": {"oneOf": [{"type": "null"}, {  # in one process: made inline, its snapshots
            "type": "object", "required": ["backup_id", "snapshots"],
            "properties": {"backup_id": {"type": "string"}, "snapshots": SNAPSHOT_PAIR}}, {
            "type": "object", "required": ["task_id", "backup_id", "state"],  # by a worker: a job of its own
            "properties": {"task_id": {"type": "string"}, "backup_id": {"type": "string"},
                           "state": {"const": "QUEUED"}}}]},
        "database": {"type": "object", "required": ["format", "name", "owner"],
                     "properties": {"format": {"enum": ["plain", "custom"]}}},
        "files": {"type": "object", "required": ["count", "bytes"],
                  "properties": {"count": {"type": "integer"}, "bytes": {"type": "integer"}}},
        "deployments": {"type": "object", "additionalProperties": {"type": "integer"}},
        "downtime_seconds": {"type": "number"},
        "steps": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["ok", "seconds"]}},
    },
}


def kinds_of(site, repo: str, snapshot_id: str) -> list[str]:
    return [s["tags"] for s in snapshots(site, repo) if s["id"] == snapshot_id][0]


def no_staging_left(site) -> bool:
    return not [n for n in os.listdir(site.media) if n.startswith(media.STAGING_PREFIX)]


def last_report(site, state_name: str) -> dict:
    client = redis.Redis.from_url(site.env["CELERY_BROKER_URL"])
    return json.loads(client.get(f"taiga-backup:taiga:last:restore:{state_name}"))


def test_custom_dumps_ids_times_and_a_missing_database(site, monkeypatch):
    monkeypatch.setenv("PG_DUMP_FORMAT", "custom")
    first_state = state(site)
    first = run_backup()
    between = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.0)
    change_everything(site)
    monkeypatch.setenv("PG_DUMP_FORMAT", "plain")
    second_state = state(site)
    second = run_backup()

    # disaster recovery: the database is gone (so no safety backup); it comes back owned by POSTGRES_USER
    site.pg.sql(f'drop database "{site.dbname}"')
    by_time = run_restore(before=between)
    assert (by_time["backup_id"], by_time["database"]["format"]) == (first["backup_id"], "custom")
    assert by_time["request"] == {"snapshot": None, "before": between[:19] + "Z", "safety_backup": True,
                                  "dry_run": False}
    assert by_time["safety_backup"] is None and "did not exist" in by_time["steps"]["safety_backup"]["skipped"]
    assert state(site) == first_state
    owner = site.pg.sql(f"select pg_get_userbyid(datdba) from pg_database where datname = '{site.dbname}'")
    assert owner == [(site.db_user,)]

    by_id = run_restore(snapshot=second["snapshots"]["files"][:8], safety_backup=False)  # a restic id, files side
    assert (by_id["backup_id"], by_id["database"]["format"]) == (second["backup_id"], "plain")
    assert state(site) == second_state


def test_a_failed_database_load_leaves_the_live_state_and_the_app_alone(site):
    """The dump grants to a role that is gone by restore time: psql stops at that error, while
    loading beside the live database with the app up; nothing live was touched or stopped."""
    role = f"gone_{site.dbname}"
    site.pg.sql(f"create role {role}")
    site.pg.sql(f"grant select on projects_project to {role}", dbname=site.dbname)
    run_backup()
    site.pg.sql(f"revoke select on projects_project from {role}", dbname=site.dbname)
    site.pg.sql(f"drop role {role}")
    change_everything(site)
    changed = state(site)
    history = {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS}

    with pytest.raises(JobFailed) as err:
        run_restore()

    assert str(err.value).startswith("load_database: psql failed") and f'role "{role}" does not exist' in str(err.value)
    assert state(site) == changed and dataset.tree_digest(str(site.media)) == changed["files"]
    assert side_copies(site) == {"databases": [], "dirs": []}
    assert {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS} == history  # never quiesced
    report = last_report(site, "failure")
    assert "quiesce" not in report["steps"] and report["safety_backup"] is None


def test_files_stage_keeps_odd_names_chowns_and_reads_absolute_snapshots(site, tmp_path):
    """worker.backups.media alone, with real restic: `.` snapshots restore at the target's root."""
    settings = site.settings()
    repo = layout.repository(settings, layout.FILES)
    repo.init_if_missing()
    add_odd_files(site.media)
    (site.media / (media.STAGING_PREFIX + "leftover")).mkdir()  # a killed restore's staging area: not backed up ...
    (site.media / "sub").mkdir()
    (site.media / "sub" / (media.STAGING_PREFIX + "upload")).write_text("a user's file of that name")  # ... this is
    before = {k: v for k, v in live_files(site.media).items() if k != media.MARKER}  # the marker stays put
    summary = repo.backup_dir(str(site.media), ["t"], excludes=media.backup_excludes(str(site.media)))
    listed = [n["path"] for n in repo.ls(summary.snapshot_id)]
    assert "/" + media.STAGING_PREFIX + "leftover" not in listed and "/sub/" + media.STAGING_PREFIX + "upload" in listed
    snap = [s for s in repo.snapshots() if s["id"] == summary.snapshot_id][0]
    assert snap["paths"] == [str(site.media)]  # restic records the absolute path of `.` ...
    os.rmdir(site.media / (media.STAGING_PREFIX + "leftover"))

    target = tmp_path / "target"
    target.mkdir()
    staged = media.stage(repo, snap, str(target), (1234, 2345))
    assert staged.source == staged.staging  # ... but keeps the tree at the root: no path to strip
    media.move_entries(staged.source, str(target))
    staged.discard()
    assert live_files(target) == before
    owners = {(os.lstat(os.path.join(d, n)).st_uid, os.lstat(os.path.join(d, n)).st_gid)
              for d, dirs, files in os.walk(target) for n in dirs + files if n != media.MARKER}
    assert owners == {(1234, 2345)}

    # a snapshot of an absolute path (`restic backup /…/media`) keeps that path below the target
    site.restic("files", "backup", "--host", "h", str(site.media))
    absolute = repo.snapshots()[-1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    staged = media.stage(repo, absolute, str(elsewhere), None)
    media.move_entries(staged.source, str(elsewhere))
    staged.discard()
    assert live_files(elsewhere) == before


def test_the_switch_journal_and_its_temporary_file_are_never_backed_up(site):
    """Both name the state of a switch in progress: restored later, they would make a settle
    act on a switch that is long over."""
    repo = layout.repository(site.settings(), layout.FILES)
    repo.init_if_missing()
    for name in (media.JOURNAL, media.JOURNAL + ".tmp"):
        (site.media / name).write_text("{}")
    (site.media / "upload.txt").write_text("kept")
    summary = repo.backup_dir(str(site.media), ["t"], excludes=media.backup_excludes(str(site.media)))
    listed = {n["path"] for n in repo.ls(summary.snapshot_id)}
    assert "/upload.txt" in listed
    assert not {"/" + media.JOURNAL, "/" + media.JOURNAL + ".tmp"} & listed


def test_a_backup_whose_media_root_holds_only_its_own_path_restores_unstripped(site, tmp_path):
    """Our backups are always `restic backup .`: a media root whose one entry is a directory
    named like its own path's first part (Taiga's `/media` holding `media/`) is not mistaken
    for a snapshot of an absolute path, whose leading folders would be stripped."""
    repo = layout.repository(site.settings(), layout.FILES)
    repo.init_if_missing()
    root = tmp_path / "mediaroot"
    nested = root.joinpath(*root.parts[1:])  # mediaroot/tmp/.../mediaroot
    nested.mkdir(parents=True)
    (nested / "upload.png").write_bytes(b"png" * 100)
    before = live_files(root)
    summary = repo.backup_dir(str(root), catalog.backup_tags("20250101T000000Z", "manual"))
    snap = [s for s in repo.snapshots() if s["id"] == summary.snapshot_id][0]
    target = tmp_path / "target"
    target.mkdir()

    staged = media.stage(repo, snap, str(target), None)

    assert staged.source == staged.staging
    media.move_entries(staged.source, str(target))
    staged.discard()
    assert live_files(target) == before


def _snap(repo_id: str, when: str, tags=()) -> dict:
    return {"id": repo_id * 8, "time": when, "tags": list(tags), "hostname": "h"}


def test_choosing_a_backup():
    """selection.choose on a synthetic catalog: ids, partners, legacy pairs, latest, before."""
    files = [_snap("a1a1a1a1", "2024-01-01T23:10:05Z"),  # legacy, paired by time with d1
             _snap("a2a2a2a2", "2024-01-02T23:10:00Z", ["backup-id=20240102T231000Z", "kind=schedule"]),
             _snap("a3a3a3a3", "2024-01-03T09:00:00Z", ["backup-id=20240103T090000Z", "kind=pre-restore"]),
             _snap("a4a4a4a4", "2024-01-04T23:10:00Z", ["backup-id=20240104T231000Z", "kind=schedule"])]
    database = [_snap("d1d1d1d1", "2024-01-01T23:10:00Z"),
                _snap("d2d2d2d2", "2024-01-02T23:10:00Z", ["backup-id=20240102T231000Z", "kind=schedule"]),
                _snap("d3d3d3d3", "2024-01-03T09:00:00Z", ["backup-id=20240103T090000Z", "kind=pre-restore"])]
    backups = catalog.pair(files, database)
    when = selection.check_before
    assert selection.choose(backups).id == "20240102T231000Z"  # 0104 lacks its database half, 0103 is a safety backup
    assert selection.choose(backups, "20240103T090000Z").id == "20240103T090000Z"  # by id: safety backups too
    assert selection.choose(backups, "d1d1d1d1").snapshot_ids()["files"] == "a1a1a1a1" * 8  # legacy partner
    assert selection.choose(backups, "a2a2a2a2a2").id == "20240102T231000Z"  # partner by tag
    assert selection.choose(backups, before=when("2024-01-02T23:09:59Z")).id == "legacy-20240101T231000Z"
    assert selection.choose(backups, before=when("2024-01-02T23:10:00Z")).id == "20240102T231000Z"
    for snapshot, before, message in [
            ("a4a4a4a4", None, "backup 20240104T231000Z is incomplete: it has no snapshot in pg-database"),
            ("ffffffff", None, "no backup or snapshot 'ffffffff'"),
            ("20240105T000000Z", None, "no backup or snapshot '20240105T000000Z'"),
            (None, when("2023-12-31"), "no backup at or before 2023-12-31T00:00:00Z: the first backup is "
                                       "legacy-20240101T231000Z from 2024-01-01T23:10:00Z")]:
        with pytest.raises(selection.SelectionError, match=re.escape(message)):
            selection.choose(backups, snapshot, before)
    twins = catalog.pair([{**_snap("abcdef01", "2024-01-01T00:00:00Z"), "id": "abcdef01" + "0" * 56},
                          {**_snap("abcdef01", "2024-01-01T12:00:00Z"), "id": "abcdef01" + "1" * 56}], [])
    with pytest.raises(selection.SelectionError, match="ambiguous"):
        selection.choose(twins, "abcdef01")


def chatops(site, tmp_path, *args) -> tuple[int, dict, list[dict]]:
    """docs/chatops_client.py in a clean environment and directory: nothing of ours importable."""
    url_file = tmp_path / "broker-url"
    url_file.write_text(site.env["CELERY_BROKER_URL"] + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CELERY_BROKER_URL_FILE": str(url_file),
           "TAIGA_INSTANCE": site.instance}
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "chatops_client.py"), "--timeout", "240", *args],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), [json.loads(line) for line in done.stderr.splitlines()]


@pytest.mark.slow
def test_backup_change_restore_by_a_plain_celery_client_gives_identical_bytes_and_can_be_undone(
        site, start_worker, tmp_path):
    from testkit.scenarios import cli

    start_worker()
    add_odd_files(site.media)
    before = state(site)
    code, made, _ = chatops(site, tmp_path, "backup")
    assert code == 0 and made["state"] == "SUCCESS"
    change_everything(site)
    changed = state(site)
    assert changed["db"] != before["db"] and changed["files"] != before["files"]
    mount_inode = os.stat(site.media).st_ino
    leftover_client = psycopg.connect(site.conninfo)  # like a taiga-back the old procedure left connected

    code, report, progress = chatops(site, tmp_path, "restore", "--snapshot", "latest")

    assert code == 0, report
    assert state(site) == before
    jsonschema.validate(report, RESULT_SCHEMA)
    order = ["PENDING", "STARTED", "PROGRESS", "SUCCESS"]  # a poll may miss the short ones
    ranks = [order.index(p["state"]) for p in progress]
    assert ranks == sorted(ranks) and progress[-1]["state"] == "SUCCESS"
    assert all(p["step"] and p["percent"] is not None for p in progress if p["state"] == "PROGRESS")
    assert len({p["step"] for p in progress if p["state"] == "PROGRESS"}) >= 3  # polled every 0.5 s
    assert os.stat(site.media).st_ino == mount_inode  # the volume's mount point stays
    with pytest.raises(psycopg.OperationalError):
        leftover_client.execute("select 1")
    assert report["backup_id"] == made["backup_id"] and report["snapshots"] == made["snapshots"]
    assert report["trigger"] == "chat" and report["database"]["format"] == "plain"
    assert report["database"]["owner"] == site.db_user and report["database"]["sessions_terminated"] >= 1
    assert report["files"]["count"] == len([v for v in before["files"].values() if not v.startswith("symlink:")])
    assert report["deployments"] == ALL_DEPLOYMENTS and site.replicas() == ALL_DEPLOYMENTS
    for name in ALL_DEPLOYMENTS:  # every user of the database was stopped, then came back
        assert [r for _, r in site.kube.history(NAMESPACE, name)][-2:] == [0, ALL_DEPLOYMENTS[name]]
    assert set(report["steps"]) == {"validate", "choose", "plan", "settle", "load_database", "stage_files", "quiesce",
                                    "switch", "resume", "safety_backup", "cleanup"}
    assert no_staging_left(site) and side_copies(site) == {"databases": [], "dirs": []}
    assert kept_state(site, report["restore_id"]) == {"db": changed["db"], "files": {
        k: v for k, v in changed["files"].items() if k != media.MARKER}}

    # the answer came with the app up; the safety backup is a job of its own, named in it
    queued = report["safety_backup"]
    assert "snapshots" not in queued and report["steps"]["safety_backup"]["task_id"] == queued["task_id"]
    followed = cli(site, "status", queued["task_id"], "--wait", "--json", timeout=300)
    assert followed.returncode == 0 and json.loads(followed.stdout)["state"] == "SUCCESS", followed.stdout
    safety = json.loads(followed.stdout)["result"]
    assert safety["job"] == "safety_backup" and safety["task_id"] == queued["task_id"]
    assert safety["backup_id"] == queued["backup_id"] and safety["restore_id"] == report["restore_id"]
    assert {"dump_db", "restic_backup"} <= set(safety["steps"])
    kept = json.loads(cli(site, "snapshots", "--kept", "--json").stdout)
    assert [k["safety_backup_owed"] for k in kept if k["id"] == report["restore_id"]] == [None]  # it expires now
    for repo, snapshot_id in safety["snapshots"].items():
        assert "kind=pre-restore" in kinds_of(site, repo, snapshot_id)
    site.restic("files", "restore", safety["snapshots"]["files"], "--target", str(tmp_path / "safety"))
    assert dataset.tree_digest(str(tmp_path / "safety")) == kept_state(site, report["restore_id"])["files"]

    code, refused, _ = chatops(site, tmp_path, "restore", "--snapshot", "../../etc/passwd")
    assert code == 1 and refused["state"] == "FAILURE" and "'../../etc/passwd' is not valid" in refused["error"]
    done = cli(site, "restore", "--snapshot=-rf", "--wait", "--json")
    assert done.returncode == 1 and "starts with '-'" in json.loads(done.stdout)["error"]
    assert state(site) == before

    undo = run_restore(snapshot=safety["backup_id"], safety_backup=False)
    assert undo["safety_backup"] is None and undo["backup_kind"] == "pre-restore"
    assert state(site) == changed and site.replicas() == ALL_DEPLOYMENTS

    stored = redis.Redis.from_url(site.env["CELERY_BROKER_URL"])
    secrets = [site.db_password, site.password_file.read_text().strip()]
    for key in stored.keys("*"):
        value = stored.dump(key) or b""
        assert not any(s.encode() in value for s in secrets), key
