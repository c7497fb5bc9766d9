"""Password change on real restic repositories: complete, repeatable, refused when unsafe, and
finished by the next run wherever a previous one was killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from testkit.site import ROOT
from worker.errors import JobFailed
from worker.jobs.job import run_job
from worker.jobs.password_flow import rotate
from worker.jobs.lease import JobLock
from worker.adapters.redis_store import connect as redis_connect

NAMES = ("files", "pg-database")
NEW_PASSWORD = "brand-new-restic-password-2"


def change_password():
    return run_job(None, "change_password", rotate)


@pytest.fixture
def new_password(repos, monkeypatch):
    path = repos.secrets / "restic-new-password"
    path.write_text(NEW_PASSWORD + "\n")
    repos.env["RESTIC_NEW_PASSWORD_FILE"] = str(path)
    monkeypatch.setenv("RESTIC_NEW_PASSWORD_FILE", str(path))
    return path


def keys(site, name, password_file=None):
    """Key ids via plain restic, or None when the password opens nothing."""
    done = site.restic(name, "key", "list", "--json", "--no-lock", check=False, password_file=password_file)
    if done.returncode:
        assert b"wrong password" in done.stderr, done.stderr
        return None
    return sorted(k["id"] for k in json.loads(done.stdout))


def assert_rotated(site, new_file):
    for name in NAMES:
        assert keys(site, name) is None, f"old password still opens {name}"
        assert len(keys(site, name, new_file)) == 1, f"{name} should have exactly the new key"


@pytest.mark.slow
def test_cli_change_password_rotates_both_and_a_second_run_changes_nothing(repos, new_password, start_worker):
    site = repos
    old_keys = {name: keys(site, name) for name in NAMES}
    start_worker(RESTIC_NEW_PASSWORD_FILE=str(new_password))
    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "change-password", "--wait", "--json"], env=env,
                          capture_output=True, text=True, timeout=180, cwd=str(ROOT))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["result"]
    assert report["state"] == "SUCCESS" and report["changed"] is True
    for name in NAMES:
        assert report["repositories"][name]["action"] == "rotated"
        assert report["repositories"][name]["removed_keys"] == old_keys[name]
    assert "restic-password" in report["message"]
    assert_rotated(site, new_password)
    assert NEW_PASSWORD not in done.stdout and "restic-secret-password-1" not in done.stdout

    again = change_password()
    assert again["state"] == "SUCCESS" and again["changed"] is False
    assert {r["action"] for r in again["repositories"].values()} == {"none"}
    assert "nothing changed" in again["message"]
    assert_rotated(site, new_password)


def test_unsafe_new_passwords_are_refused_before_any_change(repos, monkeypatch):
    site = repos
    before = {name: keys(site, name) for name in NAMES}
    same = site.secrets / "same"
    same.write_text("  restic-secret-password-1 \n")  # restic trims white space: this is the old password
    empty = site.secrets / "empty"
    empty.write_text("\n")
    cases = [(None, "RESTIC_NEW_PASSWORD_FILE is not set"),
             (str(site.secrets / "nope"), "does not exist"),
             (str(empty), "is empty"),
             (str(same), "holds the same password as RESTIC_PASSWORD_FILE")]
    for path, words in cases:
        if path:
            monkeypatch.setenv("RESTIC_NEW_PASSWORD_FILE", path)
        else:
            monkeypatch.delenv("RESTIC_NEW_PASSWORD_FILE", raising=False)
        with pytest.raises(JobFailed) as err:
            change_password()
        assert str(err.value).startswith("validate: ") and words in str(err.value)
    assert {name: keys(site, name) for name in NAMES} == before


def test_a_repository_neither_password_opens_is_an_error_and_nothing_changes(repos, new_password):
    site = repos
    third = site.secrets / "someone-elses"
    third.write_text("a-third-password\n")
    (old,) = keys(site, "pg-database")
    site.restic("pg-database", "key", "add", "--new-password-file", str(third))
    site.restic("pg-database", "key", "remove", old, password_file=str(third))
    before = keys(site, "files")

    with pytest.raises(JobFailed) as err:
        change_password()

    assert "neither RESTIC_PASSWORD_FILE nor RESTIC_NEW_PASSWORD_FILE opens repository pg-database" in str(err.value)
    assert "nothing was changed" in str(err.value)
    assert keys(site, "files") == before and keys(site, "files", new_password) is None


KILLER = """#!/bin/sh
# restic; after the third key change the job that ran it is SIGKILLed, as a pod would be
{restic} "$@"; rc=$?
case "$1 $2" in "key add"|"key remove")
  echo "$1 $2" >> {changes}
  if [ "$(wc -l < {changes})" -ge 3 ]; then kill -9 $PPID; fi;;
esac
exit $rc
"""


def test_a_change_killed_between_steps_is_finished_by_the_next_run(repos, new_password, tmp_path):
    """The job dies right after its third key change (files: add, remove; then pg-database: add):
    one repository done, the other between add and remove. The next run finishes the change."""
    site = repos
    changes = tmp_path / "changes"
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "restic"
    shim.write_text(KILLER.format(changes=changes, restic=shutil.which("restic")))
    shim.chmod(0o755)
    env = {**os.environ, **site.env, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "JOB_LOCK_LEASE": "5"}
    code = ("from worker.jobs.job import run_job; from worker.jobs.password_flow import rotate; "
            "run_job(None, 'change_password', rotate)")
    victim = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True, timeout=120)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()[-2000:]
    assert changes.read_text().splitlines() == ["key add", "key remove", "key add"]
    lease = JobLock(redis_connect(site.settings()), str(site.repo))
    deadline = time.monotonic() + 10
    while lease.holder() and time.monotonic() < deadline:
        time.sleep(0.2)  # the dead job's lease runs out (JOB_LOCK_LEASE), as after a pod crash

    report = change_password()

    assert report["state"] == "SUCCESS"
    assert_rotated(site, new_password)
    assert {name: r["action"] for name, r in report["repositories"].items()} == {"files": "none",
                                                                                 "pg-database": "completed"}
