"""worker/backups/backup_eta.py: when restic's status lines say the media pre-pass is about to end
(the moment the quiesce starts), on a fake clock."""

from __future__ import annotations


def _status(total_files, total, done):
    return {"message_type": "status", "total_files": total_files, "total_bytes": total, "bytes_done": done}


def test_the_pre_pass_end_is_seen_only_once_the_scan_settled_and_within_the_lead():
    from worker.backups.backup_eta import BackupEta

    clock = [0.0]
    eta = BackupEta(lead=1.0, clock=lambda: clock[0])
    # restic still scanning: totals grow, so however near done looks, it is not the end
    for i in range(1, 40):
        clock[0] = i * 0.1
        eta(_status(i * 100, i * 10_000_000, i * 10_000_000 - 1_000_000))
    assert not eta.near.is_set()
    # totals stand still, 100 MB/s: 1 s left (the lead) at 93 %, restic's finish included
    total, done = 1_000_000_000, 600_000_000
    for i in range(40, 80):
        clock[0] = i * 0.1
        done += 10_000_000
        eta(_status(5000, total, done))
        if done <= 900_000_000:
            assert not eta.near.is_set(), (done, eta.remaining)
    assert eta.near.is_set() and abs(eta.near_at - 7.2) < 0.05, eta.near_at
    assert 0.9 <= eta.remaining <= 1.0
    # with last night's file count, the whole tree is known scanned at once: no settling wait
    clock[0] = 0.0
    known = BackupEta(lead=1.0, expected_files=5000, clock=lambda: clock[0])
    for i, done in enumerate(range(900_000_000, 960_000_000, 10_000_000)):
        clock[0] = i * 0.1
        known(_status(5000, total, done))
    assert known.near.is_set() and known.near_at <= 0.4
    never = BackupEta(lead=0.0, clock=lambda: clock[0])
    never(_status(5000, total, total))
    assert not never.near.is_set()
