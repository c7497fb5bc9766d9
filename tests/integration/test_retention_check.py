"""Retention (`taiga_backup.prune`) and repository checks (`taiga_backup.check`) on real restic
repositories holding the old procedure's snapshots (other pods' hostnames) beside ours."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from tasks.change_password import change_password
from tasks.check import check
from tasks import prune as prune_task
from worker.jobs.check_flow import check_repositories
from worker.jobs.prune_flow import prune_repositories
from tasks.verify import verify
from worker.jobs.backup_flow import take_backup
from worker.errors import JobFailed, RequestInvalid
from worker.jobs.job import run_job
from worker.backups import retention
from worker.adapters.redis_store import check_part_key, connect as redis_connect

DAY = timedelta(days=1)


def snapshot(site, repo, when: datetime, host: str, tags=(), media=None) -> str:
    """A snapshot as an old pod made it: plain restic, its own hostname, a given time (`media`:
    another directory than the media root, as a restore's kept folder)."""
    stamp = when.astimezone().strftime("%Y-%m-%d %H:%M:%S")  # restic reads --time as local time
    args = ["backup", "--json", "--host", host, "--time", stamp, *[a for t in tags for a in ("--tag", t)]]
    if repo == "files":
        out = site.restic(repo, *args, str(media or site.media)).stdout
    else:
        out = site.restic(repo, *args, "--stdin", input=f"-- dump of {when}\n".encode()).stdout
    return [json.loads(line) for line in out.splitlines() if b'"summary"' in line][0]["snapshot_id"]


def ids(site, repo) -> set[str]:
    return {s["short_id"] for s in json.loads(site.restic(repo, "snapshots", "--json").stdout or b"[]")}


def prune(**kwargs):
    return run_job(None, "prune", lambda job: prune_repositories(job, **kwargs))


def test_prune_applies_the_seed_policy_across_pod_hostnames_and_keeps_pairs_whole(repos):
    site = repos
    report = run_job(None, "backup", lambda job: take_backup(job, "manual"))  # ours: host taiga-backup, now
    now = datetime.now(timezone.utc)
    old, recent, edge = {}, {}, {}
    for i, age in enumerate((90 * DAY, 31 * DAY)):  # legacy pairs, each from another pod
        old[i] = {r: snapshot(site, r, now - age + timedelta(minutes=m), f"taiga-backup-2839{i}-x{m}")
                  for r, m in (("pg-database", 0), ("files", 3))}
    for i, age in enumerate((2 * DAY,)):
        recent[i] = {r: snapshot(site, r, now - age + timedelta(minutes=m), f"taiga-backup-2840{i}-y{m}")
                     for r, m in (("pg-database", 0), ("files", 3))}
    # straddles the 30-day line: restic alone would keep the dump and forget its files
    edge = {"pg-database": snapshot(site, "pg-database", now - 30 * DAY + timedelta(minutes=5), "old-pod-a"),
            "files": snapshot(site, "files", now - 30 * DAY - timedelta(minutes=5), "old-pod-b")}
    before = {r: ids(site, r) for r in ("files", "pg-database")}

    planned = prune(dry_run=True)

    assert planned["dry_run"] is True and {r: ids(site, r) for r in before} == before  # nothing changed
    for repo in ("files", "pg-database"):
        going = {s["id"][:8] for s in planned["repositories"][repo]["remove"]}
        assert going == {old[i][repo][:8] for i in old}
    assert len(planned["backups_removed"]) == 2
    assert [(s["repository"], s["id"][:8]) for s in planned["kept_with_partner"]] == [("files", edge["files"][:8])]
    assert "--group-by  --keep-last 1 --keep-within 30d" in planned["policy"]

    done = prune()

    assert done["state"] == "SUCCESS" and done["dry_run"] is False
    for repo in ("files", "pg-database"):
        expect = {recent[i][repo][:8] for i in recent} | {edge[repo][:8], report["snapshots"][repo][:8]}
        assert ids(site, repo) == expect
    assert site.restic("files", "check").returncode == 0  # pruned, and still sound


def backup_at(site, when: datetime, kind: str, media=None) -> dict:
    """Both snapshots of one of our backups (its tags, our host) made at a past time."""
    backup_id = when.strftime("%Y%m%dT%H%M%SZ")
    tags = ("taiga-backup", f"backup-id={backup_id}", f"kind={kind}")
    return {repo: snapshot(site, repo, when, "taiga-backup", tags, media) for repo in ("pg-database", "files")}


def test_a_safety_backup_expires_like_the_nightly_backups_around_it(repos, tmp_path):
    """A restore's safety backup is taken inside the kept folder, a path no other backup has:
    grouped by path, `--keep-last 1` would keep it (and its dump) forever."""
    site = repos
    kept = tmp_path / ".taiga-backup-before-20250101000000"
    kept.mkdir()
    (kept / "old-upload.bin").write_bytes(os.urandom(4096))
    now = datetime.now(timezone.utc)
    nightly = {age: backup_at(site, now - age * DAY, "schedule") for age in (45, 35, 20, 1)}
    safety = backup_at(site, now - 40 * DAY, "pre-restore", media=kept)

    done = prune()

    assert done["state"] == "SUCCESS"
    for repo in ("files", "pg-database"):
        assert ids(site, repo) == {nightly[age][repo][:8] for age in (20, 1)}, repo
    assert sorted(done["backups_removed"]) == sorted(
        (now - age * DAY).strftime("%Y%m%dT%H%M%SZ") for age in (45, 40, 35))
    assert safety["files"][:8] not in ids(site, "files")


def test_optional_keep_rules_are_passed_to_restic(repos, monkeypatch):
    monkeypatch.setenv("RESTIC_DAYS_TO_KEEP", "7")
    monkeypatch.setenv("RESTIC_KEEP_MONTHLY", "6")
    assert retention.policy(repos.settings(RESTIC_DAYS_TO_KEEP="7", RESTIC_KEEP_MONTHLY="6")) == [
        "--group-by", "", "--keep-last", "1", "--keep-within", "7d", "--keep-monthly", "6"]
    now = datetime.now(timezone.utc)
    for months in (3, 2):  # one per month, older than 7 days: kept by --keep-monthly only
        for repo in ("files", "pg-database"):
            snapshot(repos, repo, now - months * 30 * DAY, "legacy-pod")
    done = prune(dry_run=True)
    assert done["backups_removed"] == []


@pytest.mark.parametrize("task,kwargs,words", [
    (prune_task.prune, {"dry_run": "yes"}, "dry_run must be true or false"),
    (prune_task.prune, {"dryrun": True}, "unknown argument(s) for taiga_backup.prune: dryrun"),
    (check, {"read_data_subset": "0/3"}, "read_data_subset must be"),
    (check, {"read_data_subset": "4/3"}, "read_data_subset must be"),
    (check, {"read_data_subset": "101%"}, "read_data_subset must be"),
    (check, {"read_data_subset": "1/3 --read-data"}, "read_data_subset must be"),
    (check, {"read_data_subset": "1/3\n"}, "read_data_subset must be"),
    (check, {"read_data_subset": "10"}, "read_data_subset must be"),  # restic wants a unit
    (check, {"read_data_subset": ["1/3"]}, "read_data_subset must be"),
    (verify, {"trigger": "cron"}, "trigger must be one of"),
    (change_password, {"new_password": "x"}, "unknown argument(s)"),
])
def test_requests_are_validated_before_anything_runs(task, kwargs, words):
    with pytest.raises(RequestInvalid) as err:
        task(**kwargs)
    assert words in str(err.value)


def corrupt_largest_pack(site, repo: str):
    """Flips one byte of the biggest pack (a data pack); returns what puts it back."""
    packs = sorted((p for p in (site.repo / repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    good = packs[-1].read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    packs[-1].write_bytes(bytes(data))
    return lambda: packs[-1].write_bytes(good)


def test_check_reads_a_rotating_subset_and_reports_damage_as_failure(repos, monkeypatch):
    site = repos
    (site.media / "big.bin").write_bytes(os.urandom(3_000_000))
    for repo in ("files", "pg-database"):
        snapshot(site, repo, datetime.now(timezone.utc), "taiga-backup")
    monkeypatch.setenv("CHECK_SUBSET_PARTS", "3")
    redis_connect(site.settings()).delete(check_part_key(site.instance))  # the rotation starts again (Redis is shared)

    first = run_job(None, "check", check_repositories)
    second = run_job(None, "check", check_repositories)

    assert (first["read_data_subset"], second["read_data_subset"]) == ("1/3", "2/3")
    assert all(r["ok"] for r in second["repositories"].values())

    repair = corrupt_largest_pack(site, "files")
    with pytest.raises(JobFailed) as err:
        run_job(None, "check", lambda job: check_repositories(job, "100%"))
    assert str(err.value).startswith("check_files: repository files is damaged: ")
    stored = json.loads(redis_connect(site.settings()).get("taiga-backup:taiga:last:check:failure"))
    files = stored["repositories"]["files"]
    assert files["ok"] is False and any("does not match" in f or "ciphertext" in f for f in files["findings"])
    assert stored["repositories"]["pg-database"]["ok"] is True  # still checked after the damage was found
    repair()  # part 3 may hold that pack
    third = run_job(None, "check", check_repositories)
    assert third["read_data_subset"] == "3/3"  # the failed explicit run did not move the rotation
