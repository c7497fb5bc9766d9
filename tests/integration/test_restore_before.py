"""`restore --before T` and a backup's time: a backup is as old as its consistency point (the
database snapshot's export, with the app down), not as old as the first restic run it used.
When the media did not change, the media pre-pass - read with the app up, minutes before the
quiesce on a big volume - becomes the backup's media snapshot and keeps restic's start time; a
write committed while that pre-pass ran is in the backup's database, so the backup must not
count as made before it."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timezone

import psycopg

from testkit.scenarios import run_backup, run_restore, snapshots
from testkit.site import descendants
from worker.adapters.restic import parse_time
from worker.backups import catalog, layout


def prepass_reading(path) -> int | None:
    """The pid of a media pre-pass's restic (it carries the pre-pass tag) among this process's
    children, once it is reading `path`: past its start, so its snapshot's time is set."""
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if catalog.PREPASS_TAG.encode() not in fh.read():
                    continue
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                return pid
        except OSError:
            continue
    return None


def rows(site) -> list[str]:
    with psycopg.connect(site.conninfo) as conn:
        return [r[0] for r in conn.execute("select note from before_marker order by note")]


def test_a_write_committed_during_the_pre_pass_is_not_restored_by_before_a_time_inside_it(repos):
    site = repos
    with psycopg.connect(site.conninfo, autocommit=True) as conn:
        conn.execute("create table before_marker (note text)")
        conn.execute("insert into before_marker values ('before')")
    first = run_backup()
    upload = site.media / "upload.bin"
    upload.write_bytes(os.urandom(256 * 1024 * 1024))  # read for long enough to be seen reading
    time.sleep(2.5)  # older than the media tree's racy window: the pre-pass becomes the snapshot
    done: dict = {}
    backup = threading.Thread(target=lambda: done.update(report=run_backup()))
    backup.start()
    deadline = time.monotonic() + 120
    while (restic := prepass_reading(upload)) is None:
        assert time.monotonic() < deadline and backup.is_alive(), "the media pre-pass never started"
        time.sleep(0.005)
    os.kill(restic, signal.SIGSTOP)  # a pre-pass as long as a big volume's
    try:
        time.sleep(1.1)
        moment = datetime.now(timezone.utc).replace(microsecond=0)  # T, inside the pre-pass
        time.sleep(1.1)
        with psycopg.connect(site.conninfo, autocommit=True) as conn:
            conn.execute("insert into before_marker values ('after')")  # committed after T
    finally:
        os.kill(restic, signal.SIGCONT)
    backup.join(300)
    second = done["report"]
    assert second["state"] == "SUCCESS"
    assert second["steps"]["restic_backup"].get("media_unchanged_since_prepass") is True  # the case at stake
    media = next(s for s in snapshots(site, layout.FILES) if f"backup-id={second['backup_id']}" in s["tags"])
    assert parse_time(media["time"]) < moment  # restic's time of the media snapshot is before T

    restored = run_restore(before=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), safety_backup=False)

    assert restored["backup_id"] == first["backup_id"]
    assert rows(site) == ["before"]
    later = run_restore(safety_backup=False)  # the newer backup does hold the write
    assert later["backup_id"] == second["backup_id"] and rows(site) == ["after", "before"]
