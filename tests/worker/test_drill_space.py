"""The restore drill refuses to start when the backup's media do not fit its scratch space
(VERIFY_DIR): a real small tmpfs, a real restic snapshot bigger than it, real PostgreSQL.

Why: in a cluster the drill's scratch space is a volume of a fixed size (the chart's `verify`
volume); a drill that restores until ENOSPC fills it every week (an ephemeral volume over its size
gets the pod evicted) and proves nothing. The refusal must come before anything is created.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from worker.adapters.redis_store import connect as redis_connect
from worker.errors import JobFailed
from worker.jobs.job import run_job
from worker.jobs.verify_flow import verify_latest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

DUMP = b"CREATE TABLE public.t (id integer);\nCOPY public.t (id) FROM stdin;\n1\n\\.\n"


@pytest.fixture
def small_scratch(tmp_path):
    path = tmp_path / "scratch"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_drill_that_does_not_fit_its_scratch_space_is_refused_before_anything_is_made(repos, small_scratch,
                                                                                        monkeypatch):
    site = repos
    monkeypatch.setenv("VERIFY_DIR", str(small_scratch))
    (site.media / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    tags = ["--tag", "backup-id=20250101T000000Z", "--tag", "kind=manual", "--host", "taiga-backup"]
    site.restic("pg-database", "backup", *tags, "--stdin", input=DUMP)
    site.restic("files", "backup", *tags, str(site.media))

    with pytest.raises(JobFailed) as err:
        run_job(None, "verify", verify_latest)

    message = str(err.value)
    assert message.startswith("prepare: the drill's scratch space"), message
    assert str(small_scratch) in message and "VERIFY_DIR" in message
    stored = json.loads(redis_connect(site.settings()).get("taiga-backup:taiga:last:verify:failure"))
    assert "files" not in stored["steps"] and "database" not in stored["steps"]  # nothing restored
    space = stored["steps"]["prepare"]["space"]
    assert space["media_bytes"] >= 6 * 1024 * 1024 > space["free_bytes"]
    assert list(small_scratch.iterdir()) == []
    assert site.pg.sql("select datname from pg_database where datname like 'taiga_backup_verify%'") == []
