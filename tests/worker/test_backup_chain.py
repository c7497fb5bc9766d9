"""The backup as a chain of real Celery tasks in a real worker process: every step a task under
the backup's root id, resume after a failure in any step, a lost lease stopping the chain, the
dump being the database as it was at the quiesced point, and downtime that does not grow with
the data."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psycopg
import pytest
from celery.result import AsyncResult

from testkit import dataset
from testkit.faults import ANNOTATION, app_at_zero, app_back, dump_blocked, snapshot_ids, wait_until
from testkit.scenarios import BACKUP_CHAIN, hold_table_lock, reconcile_now
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE, descendants
from worker.jobs import backup_flow


def processes(worker) -> list[tuple[int, str, list[bytes], int]]:
    """(pid, name, argv, nice) of each of the worker's descendants, from /proc (the nice value
    is field 19 of /proc/<pid>/stat)."""
    found = []
    for pid in descendants(worker.proc.pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        found.append((pid, name, argv, int(rest[16])))
    return found


def niceness(worker, comm: str, argv_has: bytes = b"") -> list[int]:
    """The nice values of the worker's descendants named `comm` whose command line has `argv_has`."""
    return [nice for _, name, argv, nice in processes(worker) if name == comm and (not argv_has or argv_has in argv)]


def links_of(app, task_id: str) -> list[dict]:
    """The chain as the result backend has it: from the last link (which carries the backup's
    id) back through each parent_id, first link first."""
    metas, seen = [], task_id
    while seen:
        meta = app.backend.get_task_meta(seen)
        metas.append({**meta, "id": seen})
        parent = meta.get("parent_id")
        seen = parent if parent and parent != task_id else None
    return list(reversed(metas))


def redis_of(site):
    from worker.adapters.redis_store import connect

    return connect(site.settings())


def gateway_history(site) -> list[int]:
    return [r for _, r in site.kube.history(NAMESPACE, "taiga-gateway-deployment")]


def failure(result, timeout=120) -> str:
    with pytest.raises(Exception) as err:
        result.get(timeout=timeout)
    return str(err.value)


@pytest.mark.slow
def test_every_step_is_a_task_of_its_own_under_the_backups_root_id(repos, start_worker, celery_client):
    site = repos
    worker = start_worker()
    result = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "manual"})
    report = result.get(timeout=120)
    assert report["state"] == "SUCCESS" and report["task_id"] == result.id

    links = links_of(celery_client, result.id)
    assert [m["name"] for m in links] == BACKUP_CHAIN
    assert all(m["status"] == "SUCCESS" for m in links)
    assert links[-1]["id"] == result.id  # the replaced task's id is the last link's
    assert len({m["worker"] for m in links}) == 1  # pinned to the worker holding the dump
    # routed to the worker process's own queue (prepare too: the backup task sent it from there)
    assert len({m["queue"] for m in links}) == 1 and links[0]["queue"].endswith(".pinned")
    # each link passes the context on: no secret in what Redis keeps of their arguments
    args = json.dumps([m["args"] for m in links])
    for secret in ("restic-secret-password-1", "taiga-db-secret-pw"):
        assert secret not in args
    # root ids as the worker logged them (Flower shows the same: tests/worker/test_flower.py)
    log = worker.output()
    assert all(f"[{m['id']}] received" in log for m in links)

    assert {"preflight", "media_prepass", "quiesce", "db_snapshot", "dump_db", "restic_backup",
            "resume"} <= set(report["steps"])
    assert all(isinstance(s["seconds"], float) and s["ok"] for s in report["steps"].values())
    assert 0 < report["downtime_seconds"] < report["duration_seconds"]
    assert report["backup_complete"] is True
    # only the quiesced pass and the dump are the backup: the pre-pass is gone
    assert snapshot_ids(site, "files") == [report["snapshots"]["files"]]
    assert snapshot_ids(site, "pg-database") == [report["snapshots"]["pg-database"]]
    assert report["prepass_forgotten"] is True
    assert app_back(site) and gateway_history(site) == [1, 0, 1]


def _slow_pods(site, attribute, seconds):
    old = getattr(site.kube, attribute)
    setattr(site.kube, attribute, seconds)
    return lambda: setattr(site.kube, attribute, old)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["media_prepass", "quiesce", "dump_db", "restic_backup", "resume"])
def test_the_app_is_resumed_after_a_failure_in_any_step(step, repos, start_worker, celery_client):
    site = repos
    env, undo = {}, []
    if step == "media_prepass":
        with open(site.media / "huge.bin", "wb") as f:
            f.truncate(200 * 1024 ** 3)  # sparse: costs nothing on disk, takes restic minutes to read
        env["FILES_TIMEOUT"] = 2
        expected = "media_prepass: restic backup (files) did not finish before its deadline"
    elif step == "quiesce":
        undo.append(_slow_pods(site, "pod_stop_delay", 60.0))
        env["QUIESCE_TIMEOUT"] = 1
        expected = "quiesce: 1 pod(s) of taiga-gateway-deployment still running after 1s"
    elif step == "dump_db":
        site.pg.sql("create table secret_stuff (id int); insert into secret_stuff values (1)", dbname=site.dbname)
        expected = "dump_db: pg_dump failed"
    elif step == "restic_backup":
        undo.append(_slow_pods(site, "pod_stop_delay", 2.0))
        env["FILES_TIMEOUT"] = 4
        expected = "restic_backup: restic backup (files) did not finish before its deadline"
    else:
        undo.append(_slow_pods(site, "pod_start_delay", 60.0))
        env["RESUME_TIMEOUT"] = 1
        expected = "resume: taiga-gateway-deployment has 0/1 available pods after 1s"
    start_worker(**env)
    try:
        result = celery_client.send_task("taiga_backup.backup")
        if step == "restic_backup":
            # after the pre-pass, while quiescing: only the quiesced pass meets this file
            wait_until(lambda: app_at_zero(site), 60, "the app quiesced")
            with open(site.media / "huge.bin", "wb") as f:
                f.truncate(200 * 1024 ** 3)
        text = failure(result)
    finally:
        for fn in undo:
            fn()
    assert text.startswith(expected), text
    report = json.loads(redis_of(site).get(f"taiga-backup:taiga:report:{result.id}"))
    links = links_of(celery_client, result.id)
    assert [m["name"] for m in links] == BACKUP_CHAIN  # the chain ran to its end: steps pass failures on
    if step == "media_prepass":
        assert gateway_history(site) == [1]  # failed before the app was touched
    else:
        assert gateway_history(site) == [1, 0, 1]
        assert all(ANNOTATION not in site.kube.annotations(NAMESPACE, n) for n in BACKUP_DEPLOYMENTS)
    if step == "resume":
        # a slow start is not a lost backup: both snapshots are complete and kept
        assert report["backup_complete"] is True and report["not_back"] == report["error"]
        assert snapshot_ids(site, "files") == [report["snapshots"]["files"]]
        assert snapshot_ids(site, "pg-database") == [report["snapshots"]["pg-database"]]
        wait_until(lambda: app_back(site), 90, "the slow pods to come up")
    else:
        assert report["backup_complete"] is False
        assert snapshot_ids(site, "files") == []
        assert snapshot_ids(site, "files") == [] and snapshot_ids(site, "pg-database") == []
        assert app_back(site)


@pytest.mark.slow
def test_a_lease_lost_mid_chain_stops_the_chain_before_it_does_harm(repos, start_worker, celery_client):
    """While quiesce waits for the pods, the lease is taken by another job (as when this one's
    ran out): the next link stops; nothing is dumped, and the app is left to the new holder /
    the reconciler, which resumes it once the lease is free."""
    from worker.jobs.lease import JobLock

    site = repos
    undo = _slow_pods(site, "pod_stop_delay", 3.0)
    start_worker()
    settings = site.settings()
    client = redis_of(site)
    lock = JobLock(client, settings.restic_repository)
    try:
        result = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: app_at_zero(site), 60, "the app quiescing")
        other = json.dumps({"kind": "restore", "task_id": "other-job", "host": "elsewhere", "since": "now",
                            "token": "x"})
        client.set(lock.key, other, ex=120)
        text = failure(result)
    finally:
        undo()
    assert "the job lease was lost" in text and "other-job" in text, text
    names = [m["name"] for m in links_of(celery_client, result.id)]
    assert names == BACKUP_CHAIN
    report = json.loads(client.get(f"taiga-backup:taiga:report:{result.id}"))
    assert "db_snapshot" not in report["steps"] and "restic_backup" not in report["steps"]
    assert "resume" not in report["steps"]
    assert snapshot_ids(site, "pg-database") == []
    assert app_at_zero(site) and client.get(lock.key) == other.encode()  # not resumed, lease not released
    client.delete(lock.key)
    assert reconcile_now(celery_client)["state"] == "ok"
    assert app_back(site)


@pytest.mark.slow
def test_the_worker_killed_while_the_app_is_down_fails_the_job_and_the_app_comes_back(repos, start_worker,
                                                                                       celery_client):
    """The links are pinned to the killed worker's own queue: nobody runs them. Its lease runs out
    and a new worker's reconciler resumes the app and fails the job."""
    site = repos
    undo = _slow_pods(site, "pod_stop_delay", 60.0)
    try:
        first = start_worker(JOB_LOCK_LEASE=5)
        result = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: app_at_zero(site), 60, "the app quiescing")
        first.kill()
        assert all(site.kube.annotations(NAMESPACE, n)[ANNOTATION] == str(c) for n, c in BACKUP_DEPLOYMENTS.items())
        start_worker(JOB_LOCK_LEASE=5)
        wait_until(lambda: app_back(site), 60, "the app resumed by the new worker", interval=0.1)
    finally:
        undo()
    wait_until(lambda: AsyncResult(result.id, app=celery_client).state == "FAILURE", 30, "the job marked FAILURE")
    assert "interrupted" in str(AsyncResult(result.id, app=celery_client).info)
    assert snapshot_ids(site, "pg-database") == []


@pytest.mark.slow
def test_the_dump_is_the_database_at_the_quiesced_point_though_the_app_is_back(repos, start_worker,
                                                                             celery_client, tmp_path):
    """pg_dump is held on a table lock after it imported the snapshot: the app comes back, rows are
    written, then the dump goes on - and has none of them. Meanwhile both ends of the dump's pipe
    run niced."""
    site = repos
    worker = start_worker()
    before = dataset.table_checksums(site.conninfo)
    lock = hold_table_lock(site)
    try:
        result = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: dump_blocked(site), 60, "pg_dump waiting on the table lock")
        wait_until(lambda: app_back(site), 60, "the app back while the dump waits")
        # started beside the quiesced media pass, the dump runs at a lower priority (DUMP_NICE)
        assert niceness(worker, "pg_dump") == niceness(worker, "restic", b"--stdin") == [backup_flow.DUMP_NICE]
        assert AsyncResult(result.id, app=celery_client).state not in ("SUCCESS", "FAILURE")
        with psycopg.connect(site.conninfo, autocommit=True) as conn:
            conn.execute("update users_user set full_name = 'written after resume'")
            conn.execute("create table zz_after_resume (id int)")
    finally:
        lock.execute("rollback")
        lock.close()
    report = result.get(timeout=120)
    assert report["state"] == "SUCCESS"
    assert report["downtime_seconds"] < report["steps"]["dump_db"]["seconds"] + report["downtime_seconds"]
    dump = site.restic("pg-database", "dump", report["snapshots"]["pg-database"], "stdin").stdout
    assert b"written after resume" not in dump and b"zz_after_resume" not in dump
    copy = site.dbname + "_copy"
    site.pg.create_app_db(copy, site.db_user, site.db_password)
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-o", "/dev/null",
                    site.conninfo.replace(f"dbname={site.dbname}", f"dbname={copy}")], input=dump, check=True,
                   capture_output=True)
    assert dataset.table_checksums(site.conninfo.replace(f"dbname={site.dbname}", f"dbname={copy}")) == before


@pytest.mark.slow
def test_downtime_does_not_grow_with_the_data(repos, start_worker, celery_client, record_property):
    """The same backup at two sizes (the second with ~50x the data): the data steps take longer,
    the app's downtime does not (it may grow by at most 0.15 s per second the data steps grow)."""
    site = repos
    start_worker()

    def measured():
        report = celery_client.send_task("taiga_backup.backup").get(timeout=300)
        assert report["state"] == "SUCCESS"
        data = report["steps"]["dump_db"]["seconds"] + report["steps"]["media_prepass"]["seconds"]
        return report["downtime_seconds"], data, report

    small, small_data, _ = measured()
    for i in range(100):
        (site.media / f"upload-{i}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    with psycopg.connect(site.conninfo, autocommit=True) as conn:
        conn.execute("create table zz_bulk (id int, payload text)")
        conn.execute("insert into zz_bulk select g, repeat(md5(g::text), 60) from generate_series(1, 120000) g")
    # a fresh repository, so the bigger run is a full one too
    for name in ("files", "pg-database"):
        for snap in snapshot_ids(site, name):
            site.restic(name, "forget", "--prune", snap)
    big, big_data, report = measured()
    record_property("downtime_small_big", [small, big])
    print(f"\ndowntime {small:.2f} s -> {big:.2f} s while the data steps went {small_data:.2f} s -> {big_data:.2f} s")
    assert report["files"]["total_bytes_processed"] > 200 * 1024 * 1024
    assert big_data > 1.4 * small_data
    assert big - small < 1.0 + 0.15 * (big_data - small_data)


def _learn_the_quiesce_time(site, celery_client) -> dict:
    """A first backup: the next one starts quiescing as long before its pre-pass ends as this
    one's quiesce took (pods take 1.5 s to stop here)."""
    report = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert report["state"] == "SUCCESS"
    assert "quiesce_overlap_seconds" not in report["steps"]["media_prepass"]  # nothing learnt yet
    return report


def _new_uploads(site, megabytes: int) -> None:
    for i in range(megabytes // 10):
        (site.media / f"upload-{i}.bin").write_bytes(os.urandom(10 * 1024 * 1024))


def _prepass_restic(worker) -> list[int]:
    """The pids of the media pre-pass's restic (the one run tagged as a pre-pass)."""
    return [pid for pid, name, argv, _ in processes(worker) if name == "restic" and b"taiga-backup-prepass" in argv]


@pytest.mark.slow
def test_the_app_quiesces_while_the_pre_pass_ends_and_the_backup_is_still_the_quiesced_state(
        repos, start_worker, celery_client, tmp_path):
    site = repos
    undo = _slow_pods(site, "pod_stop_delay", 1.5)
    try:
        worker = start_worker()
        first = _learn_the_quiesce_time(site, celery_client)
        lead = first["steps"]["quiesce"]["seconds"]
        assert lead >= 1.5
        _new_uploads(site, 250)
        result = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: app_at_zero(site), 60, "the app quiescing")
        running = _prepass_restic(worker)  # the pods are stopping, the pre-pass is still writing
        report = result.get(timeout=180)
    finally:
        undo()
    assert report["state"] == "SUCCESS" and report["backup_complete"] is True
    prepass = report["steps"]["media_prepass"]
    assert running and prepass["quiesce_overlap_seconds"] > 0, prepass
    assert prepass["quiesce_overlap_seconds"] <= lead + 1.5, prepass  # it ended about as the pods stopped
    # the quiesced pass came after the pre-pass: it is the backup, and it is the media as they are
    assert snapshot_ids(site, "files") == [first["snapshots"]["files"], report["snapshots"]["files"]]
    site.restic("files", "restore", report["snapshots"]["files"], "--target", str(tmp_path / "back"))
    assert dataset.tree_digest(str(tmp_path / "back")) == dataset.tree_digest(str(site.media))
    assert app_back(site) and gateway_history(site) == [1, 0, 1, 0, 1]


@pytest.mark.slow
def test_a_pre_pass_dying_while_the_app_quiesces_fails_the_job_and_the_app_comes_back(
        repos, start_worker, celery_client):
    site = repos
    undo = _slow_pods(site, "pod_stop_delay", 1.5)
    try:
        worker = start_worker()
        _learn_the_quiesce_time(site, celery_client)
        kept = {name: snapshot_ids(site, name) for name in ("files", "pg-database")}
        _new_uploads(site, 250)
        result = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: app_at_zero(site), 60, "the app quiescing")
        victims = _prepass_restic(worker)
        assert victims, "the pre-pass had ended before the pods were asked to stop"
        for pid in victims:
            os.kill(pid, 9)
        text = failure(result, timeout=180)
    finally:
        undo()
    assert text.startswith("media_prepass: "), text
    report = json.loads(redis_of(site).get(f"taiga-backup:taiga:report:{result.id}"))
    assert report["backup_complete"] is False and "restic_backup" not in report["steps"]
    assert [m["name"] for m in links_of(celery_client, result.id)] == BACKUP_CHAIN
    wait_until(lambda: app_back(site), 30, "the app back")
    assert gateway_history(site) == [1, 0, 1, 0, 1]
    # the night's dump is forgotten, the earlier backup untouched
    assert {name: snapshot_ids(site, name) for name in ("files", "pg-database")} == kept


def _tags(site, repo: str, snapshot_id: str) -> list[str]:
    docs = json.loads(site.restic(repo, "snapshots", "--json", "--no-lock", snapshot_id).stdout)
    return docs[0]["tags"]


@pytest.mark.slow
def test_media_unchanged_since_the_pre_pass_make_the_pre_pass_the_backup_without_a_second_restic_run(
        repos, start_worker, celery_client, tmp_path):
    site = repos
    start_worker()
    # written a moment ago: a second write in the same clock tick could hide, so restic looks again
    # (stamped ahead of the clock, so the tree is racy however long the backup takes to look)
    fresh = site.media / "just-written.txt"
    fresh.write_bytes(b"fresh")
    os.utime(fresh, (time.time() + 120, time.time() + 120))
    racy = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert "media_unchanged_since_prepass" not in racy["steps"]["restic_backup"]
    os.utime(fresh, (time.time() - 60, time.time() - 60))
    time.sleep(2.2)
    report = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert report["state"] == "SUCCESS" and report["backup_complete"] is True
    step = report["steps"]["restic_backup"]
    assert step["media_unchanged_since_prepass"] is True, step
    # the pre-pass, retagged, is the backup's media snapshot: listed with the backup's tags, the
    # old procedure's `latest`, and the media as they are
    files = report["snapshots"]["files"]
    assert snapshot_ids(site, "files") == [racy["snapshots"]["files"], files]
    tags = _tags(site, "files", files)
    assert f"backup-id={report['backup_id']}" in tags and not any("prepass" in t for t in tags)
    assert _tags(site, "pg-database", report["snapshots"]["pg-database"]) == tags
    site.restic("files", "restore", "latest", "--target", str(tmp_path / "back"))
    assert dataset.tree_digest(str(tmp_path / "back")) == dataset.tree_digest(str(site.media))
    assert report["files"]["total_files_processed"] == racy["files"]["total_files_processed"]
    assert app_back(site)


def _write_during(worker, target, argv_has: bytes) -> None:
    """Appends to `target` as soon as a pre-pass restic run whose argv has `argv_has` runs."""
    wait_until(lambda: [p for p, name, argv, _ in processes(worker) if name == "restic"
                        and b"taiga-backup-prepass" in argv and argv_has in argv], 60, "the pass running",
               interval=0.005)
    with open(target, "ab") as fh:
        fh.write(b" written while the pass ran")


def _being_written(site):
    target = site.media / "attachments" / "being-written.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"before " * 1000)
    time.sleep(2.2)  # nothing racy: only the writes of the test can make the media differ
    return target


def _backed_up_as_live(site, report, tmp_path) -> None:
    """The backup's media snapshot is the media as they are; it is the only one left (every pass
    before it forgotten or promoted)."""
    site.restic("files", "restore", report["snapshots"]["files"], "--target", str(tmp_path / "back"))
    assert (tmp_path / "back" / "attachments" / "being-written.bin").read_bytes().endswith(b"while the pass ran")
    assert dataset.tree_digest(str(tmp_path / "back")) == dataset.tree_digest(str(site.media))
    assert snapshot_ids(site, "files") == [report["snapshots"]["files"]]


@pytest.mark.slow
def test_media_written_during_the_pre_pass_are_caught_up_with_the_app_up(repos, start_worker, celery_client,
                                                                        tmp_path):
    """A night's upload during the pre-pass: a catch-up pass reads it before the quiesce, so no
    restic run keeps the app down."""
    site = repos
    worker = start_worker()
    target = _being_written(site)
    result = celery_client.send_task("taiga_backup.backup")
    _write_during(worker, target, b"backup")
    report = result.get(timeout=120)
    assert report["state"] == "SUCCESS" and report["backup_complete"] is True
    steps = report["steps"]
    assert steps["media_catchup"]["passes"] == 1, steps
    assert steps["media_catchup"]["started_at"] <= steps["quiesce"]["started_at"]  # the app still up
    assert steps["restic_backup"]["media_unchanged_since_prepass"] is True, steps  # no restic run with it down
    _backed_up_as_live(site, report, tmp_path)
    assert app_back(site)


@pytest.mark.slow
@pytest.mark.parametrize("passes, during", [(0, b"backup"), (1, b"--parent")], ids=["no-catch-up", "during-catch-up"])
def test_media_written_after_the_last_pass_with_the_app_up_are_read_again_with_the_app_down(
        repos, start_worker, celery_client, tmp_path, passes, during):
    site = repos
    worker = start_worker(MEDIA_CATCHUP_PASSES=passes)
    target = _being_written(site)
    result = celery_client.send_task("taiga_backup.backup")
    if passes:  # the catch-up pass starts once the pre-pass has seen the first write
        _write_during(worker, target, b"backup")
    _write_during(worker, target, during)
    report = result.get(timeout=120)
    assert report["state"] == "SUCCESS" and report["backup_complete"] is True
    step = report["steps"]["restic_backup"]
    assert "media_unchanged_since_prepass" not in step, step  # a quiesced restic pass ran
    assert ("media_catchup" in report["steps"]) is bool(passes)
    _backed_up_as_live(site, report, tmp_path)