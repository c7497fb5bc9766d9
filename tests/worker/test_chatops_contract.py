"""docs/chatops.md is a contract with programs that do not read our code: its step names are the
ones a real backup and a real restore report, its chain is the one the worker runs, and the
command it shows works as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from testkit.scenarios import BACKUP_CHAIN, run_backup, run_restore
from testkit.site import ROOT
from worker.jobs import backup_chain

DOC = (ROOT / "docs" / "chatops.md").read_text()
CLIENT_VERSION = re.compile(r"chat-ops contract (\d+)")


def documented(opening: str) -> list[str]:
    """The backticked names in the bullet of docs/chatops.md that starts with `opening`."""
    match = re.search(r"^- " + re.escape(opening) + r"(.*?)(?=^- |^\n|\Z)", DOC, re.M | re.S)
    assert match, f"docs/chatops.md has no bullet starting {opening!r}"
    return re.findall(r"`([a-z_.]+)`", match.group(1))


def test_the_documented_steps_are_those_a_backup_and_a_restore_report(site):
    backup = run_backup()
    restore = run_restore(snapshot=backup["backup_id"])
    # media_catchup runs only when media were written during the pre-pass (the doc says so;
    # test_backup_chain drives it): every other documented step is in every backup's report
    assert sorted(set(documented("The backup steps are")) - {"media_catchup"}) == sorted(backup["steps"])
    assert sorted(set(documented("The restore steps are"))) == sorted(restore["steps"])
    chain = [name for name in documented("The backup's chain of tasks is") if name.startswith("taiga_backup.")]
    assert chain == list(backup_chain.ORDER) == BACKUP_CHAIN


def test_the_contract_has_a_version_the_client_and_the_doc_agree_on():
    stated = re.search(r"^Contract version: (\d+)", DOC, re.M)
    assert stated, "docs/chatops.md states no contract version"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "worker.chatops_client", "--version"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert CLIENT_VERSION.search(done.stdout).group(1) == stated.group(1)


def test_the_documented_command_runs_as_written(tmp_path):
    """The example must parse: the client's options as the doc spells them (the broker URL in a
    file; `--broker redis://…` used to be taken for --broker-file and crash)."""
    example = re.search(r"```sh\n(.*?)\n```", DOC, re.S).group(1)
    assert "--broker " not in example and "redis://" not in example.split("#")[0], example
    assert re.search(r"CELERY_BROKER_URL_FILE|--broker-file", example), example
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    wrong = subprocess.run([sys.executable, "-m", "worker.chatops_client", "--broker",
                            "redis://127.0.0.1:1/0", "backup"], env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    assert "--broker" in wrong.stderr
