"""A restore that cannot hurt, with real PostgreSQL, restic and the Kubernetes API double: a dump
that cannot be read, or is cut short (the old procedure without pipefail), fails with the live
database and media byte-identical, the app never stopped and no side copy left; the drill fails
on the cut ones, naming the backup; a dry run touches nothing; undo-restore brings back the
exact previous state; kept states go when they expire or at the next restore."""

from __future__ import annotations

import json
import os
import time

import pytest

from testkit import dataset
from testkit.restore_checks import (KEPT_PREFIX, cut_points, kept_state, live_state, old_backup_cut, plain_dump,
                                    side_copies)
from testkit.scenarios import ALL_DEPLOYMENTS, add_odd_files, change_everything, run_backup, run_restore
from testkit.site import NAMESPACE

from worker.backups import dump_loader
from worker.errors import JobFailed, RequestInvalid
from worker.jobs import requests
from worker.jobs.job import run_job

NOTHING_LEFT = {"databases": [], "dirs": []}


def run_undo(**kwargs) -> dict:
    """The undo_restore job in this process, request validation first, as the task runs it."""
    from tasks.undo_restore import undo

    checked = requests.keyword_fields(requests.UNDO_RESTORE, (), kwargs, requests.UNDO_FIELDS)
    return run_job(None, "undo_restore", lambda job: undo(job, checked.get("restore_id")))


def run_verify() -> dict:
    from worker.jobs.verify_flow import verify_latest

    return run_job(None, "verify", verify_latest)


def untouched(site) -> dict:
    """The live state, byte for byte, and every replica change ever made."""
    return {"state": live_state(site), "digest": dataset.tree_digest(str(site.media)),
            "history": {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS}}


def fails_touching_nothing(site, expected: str, **kwargs) -> str:
    before = untouched(site)
    with pytest.raises(JobFailed) as err:
        run_restore(**kwargs)
    assert expected in str(err.value), str(err.value)
    assert untouched(site) == before  # live database and media identical, the app never scaled
    assert side_copies(site) == NOTHING_LEFT
    assert site.replicas() == ALL_DEPLOYMENTS
    return str(err.value)


@pytest.mark.parametrize("cut", ["mid-row", "after-data"])
def test_a_cut_plain_dump_of_the_old_procedure_fails_the_restore_and_the_drill(repos, cut):
    site = repos
    whole = plain_dump(site)
    old_backup_cut(site, cut_points(whole)[cut])
    stored = site.restic("pg-database", "dump", "latest", "stdin").stdout
    assert len(stored) == cut_points(whole)[cut] and dump_loader.TRAILER not in stored  # saved as a valid snapshot
    change_everything(site)

    message = fails_touching_nothing(site, "is incomplete: it does not end with pg_dump's trailer")
    assert message.startswith("load_database: the plain dump in snapshot ")

    with pytest.raises(JobFailed) as err:
        run_verify()
    assert str(err.value).startswith("database: backup legacy-") and "does not restore" in str(err.value)
    assert "is incomplete" in str(err.value)


def test_a_whole_plain_dump_of_the_old_procedure_still_restores(repos):
    site = repos
    before = live_state(site)
    old_backup_cut(site, 10 ** 12)  # head -c larger than the dump: nothing cut
    change_everything(site)
    run_restore()
    assert live_state(site) == before


def test_an_unreadable_dump_fails_before_anything_is_touched(repos):
    site = repos
    tags = ["--tag", "backup-id=20250101T000000Z", "--tag", "kind=manual", "--host", "taiga-backup"]
    site.restic("pg-database", "backup", *tags, "--stdin", "--stdin-filename", "other.sql", input=b"select 1;\n")
    site.restic("files", "backup", *tags, str(site.media))
    fails_touching_nothing(site, "load_database: restic dump (pg-database) failed", snapshot="20250101T000000Z")

    made = run_backup()  # a good backup whose data pack then goes missing
    data = site.repo / "pg-database" / "data"
    packs = sorted(p for p in data.rglob("*") if p.is_file())
    for pack in packs:
        pack.unlink()
    fails_touching_nothing(site, "load_database: restic dump (pg-database) failed", snapshot=made["backup_id"])


def test_loader_errors_carry_no_row_data():
    stderr = ('psql:<stdin>:61: ERROR:  duplicate key value violates unique constraint "users_user_email_key"\n'
              "DETAIL:  Key (email)=(alice@example.org) already exists.\n"
              'CONTEXT:  COPY users_user, line 3: "3\tpbkdf2_sha256$260000$salt$hash\talice@example.org"\n'
              'ERROR:  invalid input syntax for type integer: "bob@example.org"\n'
              "DETAIL:  Failing row contains (4, carol@example.org, null).\n"
              "CONTEXT:  COPY users_user, line 7, column id: \"dave@example.org\"")
    scrubbed = dump_loader.scrub_rows(stderr)
    for secret in ("alice@", "bob@", "carol@", "dave@", "pbkdf2"):
        assert secret not in scrubbed
    assert 'Key (email)=(…) already exists' in scrubbed and "COPY users_user, line 3: <row data withheld>" in scrubbed
    assert "COPY users_user, line 7, column id: <row data withheld>" in scrubbed


def test_dry_run_touches_nothing_and_undo_restore_brings_back_the_exact_previous_state(repos, monkeypatch):
    site = repos
    add_odd_files(site.media)
    backed_up = live_state(site)
    made = run_backup()
    change_everything(site)
    changed = live_state(site)
    before = untouched(site)
    snapshots_before = sorted(os.listdir(site.repo / "files" / "snapshots"))

    preview = run_restore(dry_run=True)
    assert untouched(site) == before and side_copies(site) == NOTHING_LEFT
    assert sorted(os.listdir(site.repo / "files" / "snapshots")) == snapshots_before
    plan = preview["plan"]
    assert plan["backup"]["backup_id"] == made["backup_id"] and plan["backup"]["snapshots"] == made["snapshots"]
    assert plan["backup"]["dump_bytes"] > 0
    assert plan["backup"]["files"]["files"] == len([k for k, v in backed_up["files"].items()
                                                    if not v.startswith("symlink:")])
    assert plan["would_keep"]["database"] == site.dbname and plan["would_keep"]["database_bytes"] > 0
    assert plan["space_needed"]["media_bytes"] == plan["backup"]["files"]["bytes"]
    assert set(preview["steps"]) == {"validate", "choose", "plan"}

    report = run_restore()
    rid = report["restore_id"]
    assert live_state(site) == backed_up
    assert kept_state(site, rid)["db"] == changed["db"]
    assert report["kept"]["database"] == f"{site.dbname}__before_{rid}"
    assert report["downtime_seconds"] > 0 and site.replicas() == ALL_DEPLOYMENTS

    undone = run_undo()
    assert undone["restore_id"] == rid
    assert live_state(site) == changed  # the exact previous state: every row, every byte
    assert not (site.media / (KEPT_PREFIX + rid)).exists() and side_copies(site) == NOTHING_LEFT
    assert site.pg.sql(f"select count(*) from pg_database where datname like '{site.dbname}\\_\\_%'") == [(0,)]
    assert site.replicas() == ALL_DEPLOYMENTS and undone["downtime_seconds"] > 0
    with pytest.raises(JobFailed, match="there is no kept previous state"):
        run_undo()
    with pytest.raises(RequestInvalid, match="restore_id must be the id of a kept restore state"):
        run_undo(restore_id="../x")


def test_kept_states_go_at_the_next_restore_or_when_they_expire(repos, capsys):
    site = repos
    run_backup()
    first = run_restore(safety_backup=False)["restore_id"]
    assert (site.media / (KEPT_PREFIX + first)).is_dir()
    time.sleep(1.1)  # restore ids have one-second resolution
    second = run_restore(safety_backup=False)
    assert second["steps"]["cleanup"]["removed_kept"] == [first]
    assert not (site.media / (KEPT_PREFIX + first)).exists()
    rid = second["restore_id"]

    from worker.backups import switch
    from worker.cli import main

    assert main(["snapshots", "--kept", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["id"], k["database"]) for k in listed] == [(rid, f"{site.dbname}__before_{rid}")]
    assert switch.expire(site.settings()) == []  # never before its time
    assert [k["id"] for k in switch.kept_states(site.settings())] == [rid]
    assert switch.expire(site.settings(RESTORE_KEEP_PREVIOUS="0")) == [rid]
    assert switch.kept_states(site.settings()) == []


def test_side_copies_and_a_switch_of_a_live_worker_are_left_alone(repos):
    """A lease wiped by a Redis restart proves nothing: what a live worker process claimed stays
    until that process is gone."""
    from worker import instance
    from worker.backups import switch

    site = repos
    settings = site.settings()
    mine = "20250101000000"
    switch.claim(settings, mine)
    site.pg.sql(f'create database "{site.dbname}__restore_{mine}" owner {site.db_user}')
    os.mkdir(site.media / f".taiga-backup-restore-{mine}")
    dead = "20250101000001"
    site.pg.sql(f'create database "{site.dbname}__restore_{dead}" owner {site.db_user}')
    before = live_state(site)

    assert switch.settle(settings, live=lambda: {instance.holder()}) == {
        "removed_leftovers": [f"{site.dbname}__restore_{dead}"]}
    assert side_copies(site) == {"databases": [f"{site.dbname}__restore_{mine}"],
                                 "dirs": [f".taiga-backup-restore-{mine}", f".taiga-backup-restore-{mine}.holder"]}
    journal = {"version": 1, "id": mine, "direction": "forward", "media": "A", "had_live": True,
               "source": f".taiga-backup-restore-{mine}", "holder": instance.holder()}
    (site.media / ".taiga-backup-switch.json").write_text(json.dumps(journal))
    with pytest.raises(switch.SwitchError, match="a worker that is still running"):
        switch.settle(settings, live=lambda: {instance.holder()})
    (site.media / ".taiga-backup-switch.json").unlink()
    assert live_state(site) == before

    assert switch.settle(settings)["removed_leftovers"] == [  # the process is gone
        f"{site.dbname}__restore_{mine}", f".taiga-backup-restore-{mine}", f".taiga-backup-restore-{mine}.holder"]
    assert side_copies(site) == NOTHING_LEFT
