"""What the reconciler does with a dead backup's snapshots, against real restic: only snapshots
tagged with that backup's own id are judged; a complete pair is a good backup and stays (its job
may have died, or lost Redis, only after making it) when its quiesced window is known whole; a half
pair goes, and so does a complete one whose app was up again inside its window."""

from __future__ import annotations

from worker.jobs.reconcile_flow import settle_backup
from testkit.faults import snapshot_ids
from testkit.scenarios import run_backup, snapshots


def test_a_complete_backup_of_a_dead_job_is_kept_and_a_half_one_forgotten(repos):
    site = repos
    complete, half, other, broken = run_backup(), run_backup(), run_backup(), run_backup()
    site.restic("pg-database", "forget", half["snapshots"]["pg-database"])  # died before its dump was saved
    site.restic("files", "backup", "--tag", f"taiga-backup-prepass,prepass-of={half['backup_id']}", str(site.media))
    prepass = [s for s in snapshots(site, "files") if f"prepass-of={half['backup_id']}" in (s.get("tags") or [])]
    assert len(prepass) == 1
    settings = site.settings()

    job, outcome, kept = settle_backup(settings, {"kind": "backup", "backup_id": complete["backup_id"]})
    assert "complete" in outcome and kept and not job.errors
    assert complete["snapshots"]["files"] in snapshot_ids(site, "files")

    job, outcome, kept = settle_backup(settings, {"kind": "backup", "backup_id": half["backup_id"]})
    assert "discarded" in outcome and not kept and not job.errors
    assert half["snapshots"]["files"] not in snapshot_ids(site, "files")
    assert prepass[0]["id"] not in snapshot_ids(site, "files")  # its media pre-pass too

    for good in (complete, other):  # never another job's snapshots
        assert good["snapshots"]["files"] in snapshot_ids(site, "files")
        assert good["snapshots"]["pg-database"] in snapshot_ids(site, "pg-database")

    # both snapshots, but the app was up again before the window was checked: not one point in time
    job, outcome, kept = settle_backup(settings, {"kind": "backup", "backup_id": broken["backup_id"]},
                                       whole=False)
    assert "not one point in time" in outcome and not kept and not job.errors
    assert broken["snapshots"]["files"] not in snapshot_ids(site, "files")
    assert broken["snapshots"]["pg-database"] not in snapshot_ids(site, "pg-database")

    job, outcome, kept = settle_backup(settings, {"kind": "backup"})  # died before it had a backup id
    assert outcome == "it had made no snapshot" and not kept
    assert len(snapshot_ids(site, "files")) == 2
