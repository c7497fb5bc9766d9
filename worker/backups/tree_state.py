"""Whether a directory tree changed between two moments, from the file system's own metadata.

Why: the media pre-pass reads the tree with the app up. If nothing in it changed from just
before that pass began until the app is down, the pre-pass's snapshot already is the media at
the quiesced point, and the second `restic backup` (key derivation, index, a stat of every file,
all while the app is down) is not needed. restic's own second pass decides "unchanged" from the
same metadata (size, mtime, ctime, inode); here every entry's type, mode, owner, size, mtime,
ctime, inode and link count, and every symlink's target, is hashed in name order, so an entry
added, removed, renamed, written, truncated, chmod-ed or touched changes the digest.

One gap metadata has, and git's index has too ("racily clean"): two writes within one tick of
the file system's clock leave the same mtime. An entry stamped within RACY_SECONDS before the
first look could still be written again unseen, so such a tree never counts as unchanged.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass

from worker.adapters import process

RACY_SECONDS = 2.0


@dataclass(frozen=True)
class TreeState:
    digest: str
    taken_ns: int  # time.time_ns() just before the walk
    newest_ns: int  # the newest mtime or ctime in the tree

    @property
    def racy(self) -> bool:
        """An entry changed so shortly before the walk that a second write could leave it looking the same."""
        return self.newest_ns >= self.taken_ns - int(RACY_SECONDS * 1e9)

    @property
    def quiet_at(self) -> float:
        """The epoch time from which a new look at an unchanged tree is no longer racy."""
        return self.newest_ns / 1e9 + RACY_SECONDS

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "TreeState":
        return cls(**doc)


# one record per entry: the two stamps first (the racy check reads them), then every field the
# digest must see, the path inside the tree and a symlink's target (NUL-ended: any byte but NUL
# may be in a name, a newline too, which only splits a record across two reads)
FIND_FORMAT = r"%T@ %C@ %i %n %y %m %U %G %s %P\0%l\0\n"


def take(root: str, skip: tuple[str, ...] = (), stamps: bool = True) -> TreeState:
    """The state of everything below `root` (and root itself), without following symlinks,
    leaving out the entries of the root named in `skip`: what the backup does not read either
    (the worker's own state, written by every signed request, even with the app down).

    Walked by GNU find (`-printf`, every entry's lstat in C), hashed as it streams: about 3.5 us
    an entry against 8-12 for the same walk in Python, which matters with the app down and half a
    million thumbnails. Entries come in directory order, stable while a directory is unchanged;
    a reordering only makes the tree count as changed (restic then reads it). `stamps=False`
    leaves the newest stamp unread (newest_ns 0): a look only compared with an earlier one, never
    itself compared with, needs no racy check. OSError when the walk failed (an entry went away
    under it)."""
    taken = time.time_ns()
    digest = hashlib.sha256()
    newest = [0]

    def record(line: bytes) -> None:
        digest.update(line)
        if stamps:
            try:
                m, c = line.split(b" ", 2)[:2]
                newest[0] = max(newest[0], _ns(m), _ns(c))
            except ValueError:
                pass  # the tail of a name with a newline in it

    prune = [arg for name in skip for arg in ("-o", "-path", "./" + re.sub(r"([][*?\\])", r"\\\1", name))][1:]
    argv = ["find", ".", *(["(", *prune, ")", "-prune", "-o"] if prune else []), "-printf", FIND_FORMAT]
    done = process.run(argv, env=process.child_env(), cwd=root, what="find (media tree)", on_line=record,
                       keep_stdout=False)
    if not done.ok:
        raise OSError(done.error())
    return TreeState(digest.hexdigest(), taken, newest[0])


def _ns(stamp: bytes) -> int:
    """find's `seconds.fraction` (10 digits) as nanoseconds."""
    sec, _, frac = stamp.partition(b".")
    return int(sec) * 1_000_000_000 + int((frac + b"000000000")[:9])


def unchanged(before: TreeState, now: TreeState) -> bool:
    """Nothing in the tree changed from `before` to `now`, for certain."""
    return not before.racy and before.digest == now.digest
