"""Backups as pairs of snapshots: one in `files`, one in `pg-database`.

Our snapshots carry a shared tag `backup-id=<id>`; the old procedure's carry no tags and are
paired by nearest time (it dumped the database, then backed up the files, minutes apart).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from datetime import datetime, timezone

from worker.adapters.restic import parse_time
from worker.backups import layout
from worker.settings import Settings

# the tags of a backup's two snapshots (backup_tags) and of its media pre-pass (prepass_tags)
PRODUCT_TAG = "taiga-backup"
ID_TAG = "backup-id="
# a backup's media pre-pass (made with the app up, the parent of the quiesced pass): never a backup
PREPASS_TAG = "taiga-backup-prepass"
PREPASS_OF_TAG = "prepass-of="
KIND_TAG = "kind="
# the backup's consistency point (the database snapshot's export, with the app down), to the
# second rounded up: what `--before` compares with, whatever restic's time of each snapshot says
# (a pre-pass that became the media snapshot keeps the time restic began reading, minutes before)
POINT_TAG = "point="
POINT_FORMAT = "%Y%m%dT%H%M%SZ"
LEGACY_MAX_GAP_SECONDS = 6 * 3600


def backup_tags(backup_id: str, trigger: str, point: str | None = None) -> list[str]:
    """Tags shared by the two snapshots of one backup: how restore finds a backup's partner, and
    (once it is known) the backup's consistency point."""
    return [PRODUCT_TAG, ID_TAG + backup_id, KIND_TAG + trigger, *([POINT_TAG + point] if point else [])]


def point_stamp(moment: float) -> str:
    """A consistency point as its tag writes it: the second after `moment` (time.time()), so a
    backup is never said to be older than what it holds."""
    return datetime.fromtimestamp(math.ceil(moment), timezone.utc).strftime(POINT_FORMAT)


def point_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, POINT_FORMAT).replace(tzinfo=timezone.utc)


def prepass_tags(backup_id: str) -> list[str]:
    """Not a backup's tags: pair() skips these, so a pre-pass is never listed as a backup."""
    return [PREPASS_TAG, PREPASS_OF_TAG + backup_id]


def _tag(snapshot: dict, prefix: str) -> str | None:
    for tag in snapshot.get("tags") or []:
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None


@dataclass
class Backup:
    id: str
    files: dict | None
    database: dict | None
    kind: str
    tagged: bool

    @property
    def complete(self) -> bool:
        return self.files is not None and self.database is not None

    @property
    def time(self) -> datetime:
        """The consistency point where the snapshots carry it; else (backups of the old procedure
        and of earlier versions) the earlier of the two snapshots' times."""
        points = [_tag(s, POINT_TAG) for s in (self.database, self.files) if s]
        point = next((p for p in points if p), None)
        if point:
            try:
                return point_time(point)
            except ValueError:
                pass  # not one of ours: the snapshots' times
        return min(parse_time(s["time"]) for s in (self.database, self.files) if s)

    def snapshot_ids(self) -> dict:
        return {layout.FILES: self.files and self.files["id"], layout.DATABASE: self.database and self.database["id"]}

    def as_dict(self) -> dict:
        return {"backup_id": self.id, "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"), "kind": self.kind,
                "complete": self.complete, "tagged": self.tagged, "snapshots": self.snapshot_ids(),
                "hosts": sorted({s.get("hostname", "") for s in (self.files, self.database) if s})}


def pair(files: list[dict], database: list[dict]) -> list[Backup]:
    """Builds the backup list (oldest first) from both repositories' snapshot lists."""
    by_id: dict[str, dict] = {}
    legacy_files, legacy_db = [], []
    for repo, snaps, legacy in ((layout.FILES, files, legacy_files), (layout.DATABASE, database, legacy_db)):
        for snap in snaps:
            if PREPASS_TAG in (snap.get("tags") or []):
                continue
            backup_id = _tag(snap, ID_TAG)
            if backup_id:
                entry = by_id.setdefault(backup_id, {"kind": _tag(snap, KIND_TAG) or "manual"})
                entry[repo] = snap
            else:
                legacy.append(snap)
    backups = [Backup(bid, e.get(layout.FILES), e.get(layout.DATABASE), e["kind"], True) for bid, e in by_id.items()]
    unmatched_files = sorted(legacy_files, key=lambda s: parse_time(s["time"]))
    for db in sorted(legacy_db, key=lambda s: parse_time(s["time"])):
        t = parse_time(db["time"])
        best = min(unmatched_files, key=lambda f: abs((parse_time(f["time"]) - t).total_seconds()), default=None)
        if best is not None and abs((parse_time(best["time"]) - t).total_seconds()) <= LEGACY_MAX_GAP_SECONDS:
            unmatched_files.remove(best)
        else:
            best = None
        backups.append(Backup("legacy-" + t.strftime("%Y%m%dT%H%M%SZ"), best, db, "legacy", False))
    for f in unmatched_files:
        backups.append(Backup("legacy-" + parse_time(f["time"]).strftime("%Y%m%dT%H%M%SZ"), f, None, "legacy", False))
    return sorted(backups, key=lambda b: b.time)


def list_backups(settings: Settings) -> list[Backup]:
    repos = layout.both(settings)
    return pair(repos[layout.FILES].snapshots(), repos[layout.DATABASE].snapshots())
