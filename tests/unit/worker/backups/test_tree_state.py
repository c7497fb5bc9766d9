"""worker/backups/tree_state.py: the media tree's digest changes with any change a backup must see,
and a state taken too soon after a change is racy."""

from __future__ import annotations

import time


def test_a_tree_state_changes_with_any_write_rename_chmod_or_link_and_fresh_trees_are_racy(tmp_path):
    import os

    from worker.backups import tree_state

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"one")
    os.symlink("d/a.bin", tmp_path / "link")
    old = time.time() - 10
    for path in (tmp_path / "d" / "a.bin", tmp_path / "d", tmp_path):
        os.utime(path, (old, old), follow_symlinks=False)
    first = tree_state.take(str(tmp_path))
    assert first.racy  # utime itself stamped the ctimes just now
    assert tree_state.take(str(tmp_path)).digest == first.digest

    def changed(change) -> bool:
        before = tree_state.take(str(tmp_path))
        time.sleep(0.01)
        change()
        return tree_state.take(str(tmp_path)).digest != before.digest

    assert changed(lambda: (tmp_path / "d" / "a.bin").write_bytes(b"two"))  # same size, new bytes
    assert changed(lambda: os.chmod(tmp_path / "d" / "a.bin", 0o600))
    assert changed(lambda: os.rename(tmp_path / "d" / "a.bin", tmp_path / "d" / "b.bin"))
    assert changed(lambda: (os.unlink(tmp_path / "link"), os.symlink("d/b.bin", tmp_path / "link")))
    assert changed(lambda: (tmp_path / "d" / "new").mkdir())
    quiet = tree_state.TreeState(first.digest, first.taken_ns, first.taken_ns - 3_000_000_000)
    assert not quiet.racy and tree_state.unchanged(quiet, first) and not tree_state.unchanged(first, first)


def test_a_racy_tree_is_quiet_racy_seconds_after_its_newest_stamp(tmp_path):
    """What the backup's settled look waits for: a new look from quiet_at on is not racy."""
    from worker.backups import tree_state

    (tmp_path / "upload.bin").write_bytes(b"just written")
    state = tree_state.take(str(tmp_path))
    assert state.racy and 0 < state.quiet_at - time.time() <= tree_state.RACY_SECONDS
    time.sleep(state.quiet_at - time.time() + 0.01)
    again = tree_state.take(str(tmp_path))
    assert not again.racy and again.digest == state.digest and tree_state.unchanged(again, state)
