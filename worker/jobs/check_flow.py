"""The repository check (`taiga_backup.check` runs it): `restic check` of both repositories,
structure plus a rotating slice of the data, so every pack is read once every CHECK_SUBSET_PARTS
runs."""

from __future__ import annotations

from worker import redact
from worker.adapters.redis_store import check_part_key, connect as redis_connect
from worker.backups import layout, restic_locks
from worker.errors import OperatorError
from worker.jobs.job import Job

MAX_FINDINGS = 40


class RepositoryDamaged(OperatorError):
    """restic check found errors; the message carries its findings."""


def check_repositories(job: Job, read_data_subset: str | None = None) -> dict:
    """The given subset, or part n of CHECK_SUBSET_PARTS, n moving on after each clean run."""
    settings = job.settings
    client = redis_connect(settings)
    rotating = read_data_subset is None
    if rotating:
        parts = settings.check_subset_parts
        part = int(client.get(check_part_key(settings.instance)) or 0) % parts + 1
        read_data_subset = f"{part}/{parts}"
    result: dict = {"read_data_subset": read_data_subset, "repositories": {}}
    for name, repo in layout.both(settings).items():
        try:
            with job.step(f"check_{name}") as entry:
                entry.update(restic_locks.make_way(settings, repo, client, exclusive=True,
                                                   on_wait=lambda msg, n=name: job.progress(f"check_{n}", None, msg)))
                done = repo.check(read_data_subset, timeout=settings.restore_timeout)
                findings = [redact.redact(line) for line in done.stderr.splitlines() if line.strip()]
                result["repositories"][name] = {"ok": done.returncode == 0, "findings": findings[:MAX_FINDINGS]}
                if done.returncode:
                    raise RepositoryDamaged(f"repository {name} is damaged: " + " | ".join(findings[:5]))
        except Exception:
            continue  # recorded on the job by its step; the other repository is still checked
    if rotating and not job.errors:
        client.set(check_part_key(settings.instance), part)
    return result
