"""Retention: the seed's policy (`forget --keep-last 1 --keep-within <RESTIC_DAYS_TO_KEEP>d --prune`,
plus optional RESTIC_KEEP_DAILY/WEEKLY/MONTHLY/YEARLY), decided per backup.

No grouping: each repository holds one series of backups, and the policy applies to all of it.
restic's default groups by host and paths, and both would split the series into groups of one
that `--keep-last 1` keeps forever: every pod of the old procedure had a new hostname, and a
restore's safety backup is taken inside the kept folder, a path no other backup has. Tags
differ per backup (backup-id=...), so they cannot group either.

restic evaluates the policy (a dry run) in each repository; a backup is then kept whole if
either of its two snapshots is kept, so a files snapshot never outlives its database dump or the
other way round (the two are taken seconds apart and could fall either side of a day boundary).
Only the snapshots left over are forgotten, by id, then pruned.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from worker.adapters.restic import parse_time
from worker.backups import catalog, layout
from worker.settings import Settings


def policy(settings: Settings) -> list[str]:
    args = ["--group-by", "", "--keep-last", "1", "--keep-within", f"{settings.days_to_keep}d"]
    for flag, count in (("--keep-daily", settings.keep_daily), ("--keep-weekly", settings.keep_weekly),
                        ("--keep-monthly", settings.keep_monthly), ("--keep-yearly", settings.keep_yearly)):
        if count:
            args += [flag, str(count)]
    return args


def _brief(snapshot: dict) -> dict:
    return {"id": snapshot["id"], "time": parse_time(snapshot["time"]).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": snapshot.get("hostname"), "tags": snapshot.get("tags") or []}


def plan(settings: Settings) -> dict:
    """What the policy removes, per repository, with pairs kept together. Changes nothing."""
    repos = layout.both(settings)
    with ThreadPoolExecutor(max_workers=len(repos)) as pool:
        groups = dict(zip(repos, pool.map(lambda r: r.forget_plan(policy(settings)), repos.values())))
    kept = {s["id"] for gs in groups.values() for g in gs for s in g.get("keep") or []}
    every = {name: [s for g in gs for s in (g.get("keep") or []) + (g.get("remove") or [])]
             for name, gs in groups.items()}
    remove: dict[str, list] = {name: [] for name in repos}
    spared, gone = [], []
    for backup in catalog.pair(every[layout.FILES], every[layout.DATABASE]):
        parts = {layout.FILES: backup.files, layout.DATABASE: backup.database}
        parts = {name: snap for name, snap in parts.items() if snap}
        if any(snap["id"] in kept for snap in parts.values()):
            spared += [{"repository": name, "backup_id": backup.id, **_brief(snap)}
                       for name, snap in parts.items() if snap["id"] not in kept]
        else:
            gone.append(backup.id)
            for name, snap in parts.items():
                remove[name].append(_brief(snap))
    return {
        "policy": " ".join(policy(settings)),
        "repositories": {name: {"snapshots": len(every[name]), "keep": len(every[name]) - len(remove[name]),
                                "remove": remove[name]} for name in repos},
        "backups_removed": gone,
        "kept_with_partner": spared,
    }
