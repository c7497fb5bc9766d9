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
import os
import stat
import time
from dataclasses import asdict, dataclass

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


def take(root: str, skip: tuple[str, ...] = ()) -> TreeState:
    """The state of everything below `root` (and root itself), without following symlinks,
    leaving out the entries of the root named in `skip`: what the backup does not read either
    (the worker's own state, written by every signed request, even with the app down)."""
    taken = time.time_ns()
    digest = hashlib.sha256()
    newest = 0
    todo = [(root, "")]
    while todo:
        path, rel = todo.pop()
        st = os.lstat(path)
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        digest.update(f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0"
                      f"{st.st_ctime_ns}\0{st.st_ino}\0{st.st_nlink}\0".encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            digest.update(os.fsencode(os.readlink(path)) + b"\0")
        elif stat.S_ISDIR(st.st_mode):
            names = [n for n in os.listdir(path) if rel or n not in skip]
            names.sort(reverse=True)  # popped in name order
            todo.extend((os.path.join(path, name), f"{rel}/{name}") for name in names)
    return TreeState(digest.hexdigest(), taken, newest)


def unchanged(before: TreeState, now: TreeState) -> bool:
    """Nothing in the tree changed from `before` to `now`, for certain."""
    return not before.racy and before.digest == now.digest
