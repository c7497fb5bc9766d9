"""Both repositories on restic's REST server, for real (Debian trixie's rest-server, fetched by
testkit.rest_server; skipped when it cannot be had): a backup and a restore work through it, and
in `--append-only` mode - the ransomware-safe setup for nightly backups - a backup still works
while a prune is refused, loudly, and removes nothing."""

from __future__ import annotations

import json

import pytest

from testkit import rest_server
from testkit.restore_checks import live_state
from testkit.scenarios import change_everything, run_backup, run_restore
from worker.backups import catalog
from worker.errors import JobFailed
from worker.settings import Settings


@pytest.fixture(scope="module")
def program():
    path = rest_server.binary()
    if not path:
        pytest.skip("restic's rest-server is not on PATH and could not be fetched from Debian trixie")
    return path


def on_rest_server(site, monkeypatch, program, append_only: bool):
    """The site's repositories moved to a fresh REST server (both below its one base URL)."""
    server = rest_server.RestServer(program, site.root / "rest-data", append_only=append_only)
    site.repo = server.url  # site.restic() reads "<repo>/<name>"
    site.env["RESTIC_REPOSITORY"] = server.url
    monkeypatch.setenv("RESTIC_REPOSITORY", server.url)
    return server


def snapshot_ids(site, name: str) -> set[str]:
    return {s["id"] for s in json.loads(site.restic(name, "snapshots", "--json").stdout or b"[]")}


@pytest.mark.slow
def test_a_backup_and_a_restore_through_a_rest_server(site, monkeypatch, program):
    server = on_rest_server(site, monkeypatch, program, append_only=False)
    try:
        backup = run_backup()
        assert backup["state"] == "SUCCESS" and backup["backup_complete"]
        before = live_state(site)
        change_everything(site)
        restored = run_restore(snapshot=backup["backup_id"], safety_backup=False)
        assert restored["state"] == "SUCCESS"
        assert live_state(site) == before
    finally:
        server.stop()


@pytest.mark.slow
def test_append_only_takes_nightly_backups_and_refuses_a_prune_keeping_everything(site, monkeypatch, program):
    from worker.jobs.job import run_job
    from worker.jobs.prune_flow import prune_repositories  # the prune task's body, run as the task runs it

    server = on_rest_server(site, monkeypatch, program, append_only=True)
    try:
        backup = run_backup(trigger="schedule")
        assert backup["state"] == "SUCCESS" and backup["backup_complete"], backup
        listed = [b for b in catalog.list_backups(Settings.from_env()) if b.id == backup["backup_id"]]
        assert listed and listed[0].complete, [b.as_dict() for b in catalog.list_backups(Settings.from_env())]
        # a backup old enough for the retention policy to remove, in both repositories
        (site.root / "old.txt").write_text("an old night\n")
        for name in ("files", "pg-database"):
            site.restic(name, "backup", "-q", "--time", "2020-01-01 00:00:00", "--host", "taiga-backup",
                        "--tag", "taiga-backup", "--tag", "backup-id=20200101T000000Z", "--tag", "kind=schedule",
                        str(site.root / "old.txt"))
        kept = {name: snapshot_ids(site, name) for name in ("files", "pg-database")}

        with pytest.raises(JobFailed) as refused:
            run_job(None, "prune", lambda job: prune_repositories(job))
        assert "403 Forbidden" in str(refused.value), str(refused.value)
        assert {name: snapshot_ids(site, name) for name in kept} == kept  # nothing was removed
    finally:
        server.stop()
