"""The restore's switch and the undo's, under the faults a real cluster produces - each made for
real: the answer to the renames' COMMIT lost on a dropped TCP connection (testkit.pg_proxy),
PostgreSQL refusing connections while the job tries to settle, a full media volume (a small
tmpfs, testkit.mounts) while staging and when the journal is written. After the job and after
the next reconcile, the live database and media are exactly one whole state - the one before
the restore or the restored one, byte for byte - nothing the user made is lost (it is live or in
the kept folder), and the app is back. Real PostgreSQL, restic, Redis and the Kubernetes double;
the jobs run in this process, as tests/integration/test_restore_safe.py runs them."""

from __future__ import annotations

import os

import pytest

from testkit import mounts
from testkit.faults import wait_until
from testkit.pg_proxy import PgProxy
from testkit.restore_checks import live_files, live_state, side_copies
from testkit.scenarios import ALL_DEPLOYMENTS, change_everything, run_backup, run_restore
from testkit.switch_checks import backed_up_then_changed, one_whole_state, outcome, reconcile, restore_id, run_undo

from worker.backups import media, switch
from worker.errors import JobFailed

RENAMES = r"alter database .* rename to"
COMMIT = r"^\s*commit\b"
NOTHING_LEFT = {"databases": [], "dirs": []}
MARGIN = getattr(media, "STAGING_MARGIN_BYTES", 8 * 1024 * 1024)


@pytest.fixture
def proxied(repos, monkeypatch):
    """The site with POSTGRES_HOST pointing at a fault-injecting proxy (the tests' own checks
    still read the server directly)."""
    proxy = PgProxy(repos.pg.port).start()
    repos.env["POSTGRES_HOST"] = proxy.address
    monkeypatch.setenv("POSTGRES_HOST", proxy.address)
    yield repos, proxy
    proxy.stop()


@pytest.mark.slow
def test_commit_answer_lost_in_the_restore_switch(proxied):
    """The renames committed, the client never heard, PostgreSQL away for a second: the job asks
    again, learns the switch happened and finishes it."""
    site, proxy = proxied
    restored, before = backed_up_then_changed(site)
    cut = proxy.cut_after(COMMIT, after=RENAMES, refuse_for=1.0)
    result = outcome(lambda: run_restore(safety_backup=False))
    assert cut.is_set()
    rid = restore_id(site)
    assert one_whole_state(site, before, restored, rid) == "restored", result
    assert not isinstance(result, JobFailed), result
    assert site.replicas() == ALL_DEPLOYMENTS and side_copies(site) == NOTHING_LEFT
    reconcile(site)
    assert one_whole_state(site, before, restored, rid) == "restored"
    assert site.replicas() == ALL_DEPLOYMENTS


@pytest.mark.slow
def test_commit_answer_lost_in_the_undo(proxied):
    site, proxy = proxied
    previous, changed = backed_up_then_changed(site)
    run_restore(safety_backup=False)
    restored = live_state(site)
    rid = restore_id(site)
    cut = proxy.cut_after(COMMIT, after=RENAMES, refuse_for=1.0)
    result = outcome(run_undo)
    assert cut.is_set()
    now = live_state(site)
    assert now in (changed, restored), "the live state is a mix of two states"
    assert now == changed, result  # the undo's renames went through: it finished the undo
    assert site.replicas() == ALL_DEPLOYMENTS and side_copies(site) == NOTHING_LEFT
    assert switch.read_journal(site.settings()) is None
    reconcile(site)
    assert live_state(site) == changed and site.replicas() == ALL_DEPLOYMENTS
    assert previous != changed and rid


@pytest.mark.slow
def test_postgres_refusing_connections_while_the_job_settles(proxied, monkeypatch):
    """The answer lost and PostgreSQL away for longer than the job waits: the job cannot know
    which state is live, so the app stays down and the switch is left to the reconciler, which
    settles it once PostgreSQL is back and only then resumes the app."""
    site, proxy = proxied
    monkeypatch.setattr(switch, "SETTLE_WITHIN", 1.5, raising=False)
    restored, before = backed_up_then_changed(site)
    cut = proxy.cut_after(COMMIT, after=RENAMES, refuse_for=6.0)
    result = outcome(lambda: run_restore(safety_backup=False))
    assert cut.is_set()
    assert isinstance(result, JobFailed) and "stays down" in str(result) and "reconcile" in str(result), result
    assert all(count == 0 for count in site.replicas().values())  # never up on a mix
    assert switch.read_journal(site.settings()) is not None
    rid = switch.read_journal(site.settings())["id"]
    assert (site.media / (media.STAGING_PREFIX + rid)).is_dir()  # the journal's source stays
    with pytest.raises(JobFailed):  # PostgreSQL still away: the reconciler too leaves the app down
        reconcile(site)
    assert all(count == 0 for count in site.replicas().values())
    wait_until(lambda: outcome(lambda: reconcile(site)).__class__ is dict, 30, "a reconcile that settles")
    assert one_whole_state(site, before, restored, rid) == "restored"
    assert site.replicas() == ALL_DEPLOYMENTS and side_copies(site) == NOTHING_LEFT


@pytest.fixture
def small_media(repos):
    """The site's media on a small real tmpfs (its contents kept), so a full disk is real ENOSPC."""
    if not mounts.can_mount():
        pytest.skip("mounting a tmpfs needs root")
    holder = {}

    def mount(size_bytes: int):
        holder["cm"] = mounts.tmpfs(repos.media, size_bytes)
        holder["cm"].__enter__()
        return repos.media

    yield mount
    if "cm" in holder:
        holder["cm"].__exit__(None, None, None)


def tree_pages(root) -> int:
    """What the tree takes on tmpfs: every file rounded up to whole pages."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += -(-os.lstat(path).st_size // 4096) * 4096
    return total


@pytest.mark.slow
def test_staging_leaves_a_margin_on_the_media_volume(repos, small_media):
    """A volume that would hold the staged files only to its last bytes is refused beforehand:
    the app's own uploads need room while the restore stages."""
    site = repos
    run_backup()
    change_everything(site)
    need = media.tree_size(str(site.media))["bytes"]
    small_media(tree_pages(site.media) + need + 2 * 4096 * 64 + MARGIN // 2)
    before = live_state(site)
    result = outcome(lambda: run_restore(safety_backup=False))
    assert isinstance(result, JobFailed) and "nothing was changed" in str(result), result
    assert live_state(site) == before and side_copies(site) == NOTHING_LEFT
    assert site.replicas() == ALL_DEPLOYMENTS


@pytest.mark.slow
def test_enospc_while_staging_leaves_everything_as_it_was(repos, small_media):
    """Many small files: their bytes pass the space check, their blocks do not fit - restic runs
    out of space for real halfway through staging."""
    site = repos
    tiny = site.media / "tiny"
    tiny.mkdir()
    for i in range(2500):
        (tiny / f"{i:05d}").write_bytes(b"x")
    run_backup()
    change_everything(site)
    need = media.tree_size(str(site.media))["bytes"]
    small_media(tree_pages(site.media) + need + MARGIN + 1024 * 1024)
    before = live_state(site)
    result = outcome(lambda: run_restore(safety_backup=False))
    assert isinstance(result, JobFailed) and "no space left" in str(result).lower(), result
    assert live_state(site) == before and side_copies(site) == NOTHING_LEFT
    assert site.replicas() == ALL_DEPLOYMENTS
    reconcile(site)
    assert live_state(site) == before and site.replicas() == ALL_DEPLOYMENTS


@pytest.mark.slow
def test_enospc_writing_the_journal(proxied, small_media):
    """An upload fills the media volume while the switch's renames commit: the next journal write
    meets ENOSPC for real. The switch's reserve gives that write its room, so the switch is
    finished (or rolled back) whole; the upload is live or in the kept folder."""
    site, proxy = proxied
    restored, before = backed_up_then_changed(site)
    small_media(tree_pages(site.media) * 2 + 16 * 1024 * 1024)
    filled = {}
    proxy.on_statement(COMMIT, lambda: filled.setdefault("file", mounts.fill(site.media, name="big upload.bin")),
                       after=RENAMES)
    result = outcome(lambda: run_restore(safety_backup=False))
    assert filled, "the volume was filled at the switch"
    upload = filled["file"].name
    rid = restore_id(site)
    kept = site.media / (media.KEPT_PREFIX + rid)
    assert (site.media / upload).exists() or (kept / upload).exists()
    for folder in (site.media, kept):  # the upload is not one of the states compared
        if (folder / upload).exists():
            (folder / upload).unlink()
    which = one_whole_state(site, before, restored, rid)
    assert switch.read_journal(site.settings()) is None, result
    assert not [n for n in os.listdir(site.media) if n.startswith(media.JOURNAL)]
    assert site.replicas() == ALL_DEPLOYMENTS
    reconcile(site)
    assert one_whole_state(site, before, restored, rid) == which and site.replicas() == ALL_DEPLOYMENTS
    assert live_files(site.media) == (before if which == "previous" else restored)["files"]


def redis_restarted_and_taken(site, taken: list):
    """Redis restarts empty and a backup takes the repository's lease at once: what a job whose
    lease was wiped must notice before it touches the app."""
    from worker.adapters.redis_store import connect
    from worker.jobs.lease import JobLock

    def strike():
        site.redis_server.stop()
        site.redis_server.start()
        settings = site.settings()
        lock = JobLock(connect(settings), settings.restic_repository, 60)
        lock.acquire("backup", "a-backup-that-took-the-lease")
        taken.append(lock)

    return strike


@pytest.mark.slow
@pytest.mark.parametrize("job", ["restore", "undo"])
def test_a_lease_taken_mid_job_stops_it_before_the_app_is_touched(proxied, job):
    """Restore: the lease taken while the side database loads; undo: while it checks the
    database. Either stops before quiescing: live state and replicas as they were, no side copy."""
    site, proxy = proxied
    taken: list = []
    restored, before = backed_up_then_changed(site)
    if job == "undo":
        run_restore(safety_backup=False)
        before = live_state(site)
        proxy.on_statement(r"pg_has_role", redis_restarted_and_taken(site, taken))
    else:
        proxy.on_statement(r"^\s*copy\b.*from stdin", redis_restarted_and_taken(site, taken))
    history = {n: site.kube.history("taiga", n) for n in ALL_DEPLOYMENTS}
    try:
        result = outcome(lambda: run_restore(safety_backup=False) if job == "restore" else run_undo())
    finally:
        for lock in taken:
            lock.release()
    assert taken, "the lease was taken during the job"
    assert isinstance(result, JobFailed) and "lease" in str(result), result
    assert live_state(site) == before
    assert {n: site.kube.history("taiga", n) for n in ALL_DEPLOYMENTS} == history  # never stopped
    assert site.replicas() == ALL_DEPLOYMENTS
    if job == "restore":
        assert side_copies(site) == NOTHING_LEFT

