"""A restore's plan and a drill's space check read a snapshot's size from what its backup
recorded (restic 0.17+ keeps a summary in every snapshot) instead of listing its whole tree with
`restic ls`; a snapshot of an older restic (the old procedure's, Debian 12's 0.14) is still
listed. Both ways give the same figures, and the figures are the live tree's. Real restic, real
PostgreSQL: CI runs this file with the shipped restic and with 0.14."""

from __future__ import annotations

import os
import re
import subprocess

from testkit.scenarios import add_odd_files, run_backup
from worker.adapters.restic import Repository
from worker.backups import catalog, layout, media
from worker.settings import Settings


def restic_version() -> tuple[int, ...]:
    """The restic on PATH, the one the jobs run."""
    out = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(n) for n in re.match(r"restic (\d+)\.(\d+)", out).groups())


def regular_files(root) -> tuple[int, int]:
    sizes = [os.lstat(os.path.join(d, f)).st_size for d, _, names in os.walk(root) for f in names
             if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))]
    return len(sizes), sum(sizes)


def test_the_recorded_size_of_a_backup_is_the_listed_one_and_the_trees(repos):
    site = repos
    add_odd_files(site.media)  # a symlink, names with spaces and dashes: not counted as files
    files, size = regular_files(site.media)
    made = run_backup()
    repos_ = layout.both(Settings.from_env())
    listed = {name: repo.snapshots() for name, repo in repos_.items()}
    (backup,) = [b for b in catalog.pair(listed[layout.FILES], listed[layout.DATABASE]) if b.id == made["backup_id"]]

    for name, snapshot in ((layout.FILES, backup.files), (layout.DATABASE, backup.database)):
        repo: Repository = repos_[name]
        by_listing = media.snapshot_size(repo, {"id": snapshot["id"]})  # no summary: restic ls
        recorded = media.recorded_size(snapshot)
        if restic_version() >= (0, 17):
            assert recorded is not None, snapshot  # the shipped restic records it: no tree walk
            assert (recorded["files"], recorded["bytes"]) == (by_listing["files"], by_listing["bytes"]), name
        else:
            assert recorded is None
        assert media.snapshot_size(repo, snapshot) == (recorded or by_listing)
    assert media.snapshot_size(repos_[layout.FILES], backup.files)["files"] == files
    assert media.snapshot_size(repos_[layout.FILES], backup.files)["bytes"] == size
    assert media.snapshot_size(repos_[layout.DATABASE], backup.database)["files"] == 1  # the dump
