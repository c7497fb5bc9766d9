"""A chat-ops bot "in another namespace": a separate process that has the broker URL (in a file),
the kwargs docs/chatops.md documents and, when signing is on, its own key - and nothing of this
project's code or settings. It queues a restore (a dry run) through a real worker and reads its
result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.scenarios import run_backup
from testkit.site import ROOT
from testkit.pki import signing_env

CHATOPS = str(Path(sys.executable).with_name("taiga-backup-chatops"))  # the installed console script

# the whole bot when signing is off: Celery, the broker URL, a task name and its documented kwargs,
# sent to the instance's queue (contract 2)
CELERY_ONLY_BOT = r"""
import json, sys
from celery import Celery
url = open(sys.argv[1]).read().strip()
app = Celery(broker=url, backend=url)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                result_accept_content=["json"])
result = app.send_task("taiga_backup.restore", kwargs={"snapshot": "latest", "dry_run": True, "trigger": "chat"},
                       queue="taiga-backup." + sys.argv[2])
report = result.get(timeout=120)
assert not any(m == "worker" or m.startswith(("worker.", "tasks")) for m in sys.modules), "the bot used our code"
print(json.dumps(report))
"""


def bot_env(site, home: Path) -> dict:
    """What the bot's pod has: a PATH, a home, the broker URL in a file - none of site.env."""
    url_file = home / "broker-url"
    url_file.write_text(site.env["CELERY_BROKER_URL"] + "\n")
    return {"PATH": os.environ["PATH"], "HOME": str(home), "CELERY_BROKER_URL_FILE": str(url_file)}


def bot_home(tmp_path) -> Path:
    home = tmp_path / "bot"
    home.mkdir()
    return home


@pytest.mark.slow
def test_a_bot_that_only_speaks_celery_queues_a_dry_run_restore_and_reads_the_plan(site, start_worker, tmp_path):
    backup = run_backup()
    start_worker()
    home = bot_home(tmp_path)
    env = bot_env(site, home)
    done = subprocess.run([sys.executable, "-I", "-c", CELERY_ONLY_BOT, env["CELERY_BROKER_URL_FILE"], site.instance], cwd=str(home),
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["dry_run"] is True and report["backup_id"] == backup["backup_id"]
    assert report["plan"]["backup"]["snapshots"] == backup["snapshots"]


@pytest.mark.slow
def test_a_bot_with_its_own_key_uses_the_console_script_against_a_signed_worker(repos, pki, signed_worker,  # noqa: F811
                                                                               tmp_path):
    site = repos
    backup = run_backup()
    home = bot_home(tmp_path)
    env = {**bot_env(site, home), **signing_env(pki, "bot")}
    done = subprocess.run([CHATOPS, "--instance", site.instance, "--timeout", "120", "restore", "--snapshot", backup["backup_id"], "--dry-run"],
                          cwd=str(home), env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["dry_run"] is True and report["backup_id"] == backup["backup_id"]
    assert report["request"]["snapshot"] == backup["backup_id"] and report["trigger"] == "chat"
    # each change as the worker stored it (the client waits on the result's channel, not a poll
    # that can miss a step lasting milliseconds): the steps of a dry run, in order, then SUCCESS
    followed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    steps = [line["step"] for line in followed if line["state"] == "PROGRESS"]
    assert [s for s in ("validate", "choose", "plan") if s in steps] == ["validate", "choose", "plan"], followed
    assert followed[-1] == {"task_id": followed[0]["task_id"], "state": "SUCCESS"}


def test_the_client_imports_only_celery_and_the_signing_stamp():
    probe = ("import sys, worker.chatops_client; "
             "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'tasks', 'beat_schedule'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    ours = set(done.stdout.split())
    allowed = {"worker", "worker.chatops_client", "worker.runtime", "worker.runtime.stamp"}
    assert ours <= allowed, sorted(ours - allowed)
