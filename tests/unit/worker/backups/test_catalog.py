"""worker/backups/catalog.py: restic snapshots of the two repositories paired into backups, by tag
or, for the old procedure's untagged ones, by nearest time."""

from __future__ import annotations

from worker.backups.catalog import pair


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
