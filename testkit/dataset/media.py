"""The media side of the dataset: Taiga's upload paths, file sizes and names, file contents.

Why here and not with the rows: an attachment is a file *and* a row, and the row needs the
file's real size and sha1; files are planned first (plan_attachments, deterministic), written by
a thread while the database loads (MediaWriter), and the rows are completed from what was
written (attachment_row).  Contents derive from a per-file seed, so the same dataset gives the
same bytes whatever order or thread writes them.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading

from testkit.dataset.common import CONTENT_TYPES, ODD_FILENAMES, T0, T_SPAN, hex_bits, ts
from testkit.dataset.rows import created_after
from testkit.dataset.text import Text

_BIN_EXT = ["png", "png", "png", "jpg", "jpg", "pdf", "pdf", "zip", "docx", "xlsx", "mp4", "gif"]
TXT_EXT = ["txt", "md", "csv", "log", "json"]


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _attachment_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.70:
        return log_uniform(rng, 4_000, 300_000)
    if r < 0.95:
        return log_uniform(rng, 300_000, 3_000_000)
    return log_uniform(rng, 3_000_000, 8_000_000)


def taiga_path(prefix: str, rng: random.Random, filename: str) -> str:
    """Taiga stores uploads as <prefix>/<a>/<b>/<c>/<random hash>/<original name>."""
    h = hex_bits(rng, 256)
    return f"{prefix}/{h[0]}/{h[1]}/{h[2]}/{h[3:]}/{filename}"


def _attachment_name(rng: random.Random, words: list[str], binary: bool) -> str:
    if binary:
        ext = rng.choice(_BIN_EXT)
        if ext == "png" and rng.random() < 0.5:
            d = ts(T0 + rng.random() * T_SPAN)
            return d.strftime("Screenshot from %Y-%m-%d %H-%M-%S.png")
        return f"{rng.choice(words)}_{rng.choice(words)}-{rng.randrange(1000)}.{ext}"
    return f"{rng.choice(words)}-{rng.randrange(100)}.{rng.choice(TXT_EXT)}"


class MediaFile:
    __slots__ = ("path", "size", "kind", "content_seed", "sha1", "written")

    def __init__(self, path: str, size: int, kind: str, content_seed: str):
        self.path = path  # relative to media_dir
        self.size = size
        self.kind = kind  # "bin" | "text"
        self.content_seed = content_seed
        self.sha1 = None
        self.written = 0


def write_media_file(media_dir: str, mf: MediaFile, text: Text) -> None:
    """Write one file; bytes derive from mf.content_seed so the dataset is reproducible.

    Binary content is pseudo-random (incompressible, not deduplicable across files);
    Random.randbytes runs at ~400 MB/s, comparable to os.urandom.
    """
    full = os.path.join(media_dir, mf.path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    h = hashlib.sha1()
    rng = random.Random(mf.content_seed)
    with open(full, "wb") as f:
        if mf.kind == "text":
            data = text.text(rng, mf.size).encode("utf-8")[: mf.size]
            # cut at a character boundary so the file stays valid UTF-8
            data = data.decode("utf-8", "ignore").encode("utf-8")
            f.write(data)
            h.update(data)
            mf.written = len(data)
        else:
            left = mf.size
            while left > 0:
                chunk = rng.randbytes(min(left, 1 << 20))
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
            mf.written = mf.size
    mf.sha1 = h.hexdigest()


class MediaWriter(threading.Thread):
    """Writes the planned media files while the main thread loads the database."""

    def __init__(self, media_dir: str, files: list[MediaFile], text: Text):
        super().__init__(name="media-writer", daemon=True)
        self.media_dir, self.files, self.text = media_dir, files, text
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for mf in self.files:
                write_media_file(self.media_dir, mf, self.text)
        except BaseException as e:  # re-raised by the main thread
            self.error = e

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def media_bytes(media_dir: str) -> int:
    """Bytes of the regular files under media_dir (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(media_dir):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def plan_attachments(rng, text, budget: int, start_id: int, kinds_items, n_users,
                     include_odd: bool, seed_tag: str, day=None, max_file: int | None = None):
    """Plan attachment files and their DB rows (row completed once the file is written)."""
    planned = []  # (row-without-size/sha1, MediaFile)
    aid = start_id
    cts = [(ct, first, it) for ct, first, it in kinds_items if len(it.project)]

    def add(name, size, kind):
        nonlocal aid
        ct, first, it = rng.choices(cts, weights=[5, 3, 2][: len(cts)])[0]
        k = rng.randrange(len(it.project))
        created = day + rng.random() * 86400 if day else created_after(rng, it.created[k])
        path = taiga_path("attachments", rng, name)
        mf = MediaFile(path, size, kind, f"{seed_tag}:{aid}:{path}")
        row = [aid, rng.randint(1, n_users), ts(created), ts(created), first + k, path, False,
               text.text(rng, 60) if rng.random() < 0.2 else "", 1, CONTENT_TYPES[ct],
               it.project[k], name, None, None, rng.random() < 0.3]
        planned.append((row, mf))
        aid += 1
        return size

    used = 0
    if include_odd:
        for name in ODD_FILENAMES:
            used += add(name, 0 if name == "empty.txt" else rng.randint(500, 4000), "text")
    while used < budget:
        binary = rng.random() < 0.85
        size = _attachment_size(rng) if binary else log_uniform(rng, 1_000, 200_000)
        size = max(1, min(size, budget - used, max_file or size))
        name = _attachment_name(rng, text.words, binary)
        used += add(name, size, "bin" if binary else "text")
    return planned


def attachment_row(row, mf: MediaFile):
    """The planned row with the written file's size and sha1 filled in."""
    row = list(row)
    row[12] = mf.written
    row[13] = mf.sha1
    return tuple(row)
