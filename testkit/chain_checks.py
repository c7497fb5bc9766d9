"""What the backup-chain fault tests look at: the snapshots carrying a backup's tags, `latest` as
the old procedure sees it, our report in Redis, and the chain links a worker has received."""

from __future__ import annotations

import json
import re

from worker.adapters.redis_store import connect as redis_connect
from worker.backups import catalog

REPOS = ("files", "pg-database")


def snapshots(site, repo: str) -> list[dict]:
    return json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]") or []


def tagged_with(site, backup_id: str) -> dict[str, list[str]]:
    """Every snapshot carrying the backup's id or its pre-pass's tag, per repository."""
    ours = {catalog.ID_TAG + backup_id, catalog.PREPASS_OF_TAG + backup_id}
    return {repo: [s["id"] for s in snapshots(site, repo) if ours & set(s.get("tags") or [])] for repo in REPOS}


def latest(site, repo: str) -> str | None:
    """`restic snapshots latest`, as the old procedure restores it."""
    docs = json.loads(site.restic(repo, "snapshots", "--json", "--no-lock", "latest").stdout or b"[]") or []
    return docs[0]["id"] if docs else None


def report_of(site, task_id: str) -> dict:
    """Our report of the job, as Redis has it now ({} when there is none)."""
    raw = redis_connect(site.settings()).get(f"taiga-backup:taiga:report:{task_id}")
    return json.loads(raw) if raw else {}


def received(site) -> str:
    """The task names the site's last-started worker has received so far, from its log."""
    logs = sorted(site.root.glob("worker-*.log"))
    return " ".join(re.findall(r"(taiga_backup\.\w+)\[[^\]]+\] received", logs[-1].read_text(errors="replace")))
