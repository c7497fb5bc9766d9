"""Metrics, notifications and JSON logs of a real worker, against HTTP endpoints started here."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timezone

import pytest

from testkit.scenarios import start_idle_worker
from prometheus_client.parser import text_string_to_metric_families

from testkit.servers import free_port
from worker.jobs.backup_flow import take_backup
from worker.jobs.job import run_job
from worker import fleet_view
from worker.adapters import notify, redis_store
from worker.settings import SettingsError
from testkit.endpoints import Endpoint

TOKEN = "tok-3f9c1d7e"  # stands for the token such URLs carry: it must never be logged


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def scrape(port: int, instance: str = "taiga") -> dict:
    """{(sample name, ((label, value), ...)): value} of everything the exporter serves; every
    sample carries the worker's instance (`taiga_instance`), left out of the keys."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert {s.labels.get("taiga_instance") for s in samples} == {instance}
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "taiga_instance"))): s.value
            for s in samples}


def wait_for(port: int, key: tuple, value: float, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples.get(key) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def job(name: str) -> tuple:
    return (("kind", name),)


def unix(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.slow
def test_worker_metrics_and_notifications_for_a_good_and_a_failed_backup(site, start_worker, celery_client,
                                                                         endpoint, tmp_path):
    port = free_port()
    url_file = site.secrets / "webhook-url"
    url_file.write_text(f"{endpoint.url}/hook/{TOKEN}\n")
    worker = start_idle_worker(start_worker, celery_client, METRICS_PORT=port, NOTIFY_WEBHOOK_URL_FILE=url_file,
                               HEALTHCHECK_PING_URL=f"{endpoint.url}/ping/{TOKEN}")

    report = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert report["state"] == "SUCCESS"

    m = wait_for(port, ("taiga_backup_snapshots", (("repository", "pg-database"),)), 1)
    assert m[("taiga_backup_snapshots", (("repository", "files"),))] == 1
    # the same count, recorded in Redis for the fleet view (before the gauges are set)
    view = fleet_view.instance_view(redis_store.connect(site.settings()), "taiga")
    sizes = {repo: m[("taiga_backup_repository_size_bytes", (("repository", repo),))] for repo in ("files", "pg-database")}
    assert view["repositories"] == {repo: {"snapshots": 1, "size_bytes": size} for repo, size in sizes.items()}
    assert view["repository_bytes"] == sum(sizes.values()) > 0
    assert abs(m[("taiga_backup_last_success_timestamp_seconds", job("backup"))] - time.time()) < 60
    assert m[("taiga_backup_last_success_timestamp_seconds", job("backup"))] == unix(report["finished_at"])
    assert m[("taiga_backup_last_run_success", job("backup"))] == 1
    assert m[("taiga_backup_last_duration_seconds", job("backup"))] == report["duration_seconds"]
    for repo in ("files", "pg-database"):
        assert m[("taiga_backup_last_backup_added_bytes", (("repository", repo),))] == report["bytes_added"][repo]
    assert report["bytes_added"]["total"] > 0
    assert m[("taiga_backup_last_backup_files", (("change", "new"),))] == report["files"]["files_new"] > 0
    assert m[("taiga_backup_last_backup_files", (("change", "changed"),))] == report["files"]["files_changed"]
    assert m[("taiga_backup_last_backup_downtime_seconds", ())] == report["downtime_seconds"] > 0
    assert m[("taiga_backup_last_step_duration_seconds", (("kind", "backup"), ("step", "dump_db")))] == \
        report["steps"]["dump_db"]["seconds"]
    assert m[("taiga_backup_jobs_total", (("kind", "backup"), ("state", "success")))] == 1
    assert m[("taiga_backup_job_failures_total", job("backup"))] == 0
    assert m[("taiga_backup_job_running", job("backup"))] == 0

    ping = f"/ping/{TOKEN}"
    assert endpoint.paths() == [f"{ping}/start", ping, f"/hook/{TOKEN}"]
    assert endpoint.requests[1]["body"].startswith(f"backup {report['backup_id']}: ")
    [hook] = endpoint.json_bodies("/hook/")
    assert endpoint.requests[2]["type"] == "application/json"
    assert hook == {"job": "backup", "state": "SUCCESS", "task_id": report["task_id"], "error": None,
                    "finished_at": report["finished_at"], "backup_id": report["backup_id"],
                    "summary": hook["text"], "text": hook["text"]}
    assert hook["summary"].startswith(f"backup {report['backup_id']}: ") and " added, app down " in hook["summary"]

    # the database goes away: the next backup fails in preflight
    site.pg.sql(f"alter database {site.dbname} rename to {site.dbname}_gone")
    failed = celery_client.send_task("taiga_backup.backup")
    with pytest.raises(Exception, match="does not exist"):
        failed.get(timeout=120)

    m = wait_for(port, ("taiga_backup_job_failures_total", job("backup")), 1)
    assert m[("taiga_backup_job_failures_total", job("backup"))] == 1
    assert m[("taiga_backup_jobs_total", (("kind", "backup"), ("state", "failure")))] == 1
    assert m[("taiga_backup_last_run_success", job("backup"))] == 0
    assert abs(m[("taiga_backup_last_failure_timestamp_seconds", job("backup"))] - time.time()) < 60
    assert m[("taiga_backup_last_success_timestamp_seconds", job("backup"))] == unix(report["finished_at"])
    assert endpoint.paths()[3:] == [f"{ping}/start", f"{ping}/fail", f"/hook/{TOKEN}"]
    hook = endpoint.json_bodies("/hook/")[1]
    assert hook["state"] == "FAILURE" and hook["task_id"] == failed.id
    assert "does not exist" in hook["error"] and hook["summary"].startswith("backup ")
    assert " FAILED after " in hook["summary"] and "does not exist" in hook["summary"]

    # a restarted worker still knows when the last backup succeeded (and that the last one failed)
    worker.stop()
    start_worker(METRICS_PORT=port)
    m = wait_for(port, ("taiga_backup_last_run_success", job("backup")), 0)
    assert m[("taiga_backup_last_success_timestamp_seconds", job("backup"))] == unix(report["finished_at"])
    assert m[("taiga_backup_last_run_success", job("backup"))] == 0
    assert m[("taiga_backup_last_backup_added_bytes", (("repository", "files"),))] == report["bytes_added"]["files"]
    assert m[("taiga_backup_job_failures_total", job("backup"))] == 0  # counters restart, as Prometheus expects

    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert TOKEN not in logs


def test_a_hanging_webhook_and_a_flaky_ping_never_fail_a_backup(site, endpoint, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", f"{endpoint.url}/hang/{TOKEN}")
    monkeypatch.setenv("HEALTHCHECK_PING_URL", f"{endpoint.url}/flaky/{TOKEN}")
    t0 = time.monotonic()
    report = run_job(None, "backup", lambda job: take_backup(job, "manual"))
    took = time.monotonic() - t0

    assert report["state"] == "SUCCESS"
    assert json.loads(site.restic("files", "snapshots", "--json").stdout)[0]["id"] == report["snapshots"]["files"]
    # 503 is retried once (and then arrives); a timeout is not retried: the server may have it
    assert endpoint.paths() == [f"/flaky/{TOKEN}/start"] * 2 + [f"/flaky/{TOKEN}"] * 2 + [f"/hang/{TOKEN}"]
    assert took < report["duration_seconds"] + notify.TIMEOUT + 2 * notify.RETRY_AFTER + 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "taiga_backup.notify"]
    assert any(w.startswith("webhook: no answer within") for w in warnings), warnings
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_json_logs_have_one_line_per_step_with_its_duration(site, start_worker, celery_client, tmp_path):
    worker = start_idle_worker(start_worker, celery_client, LOG_FORMAT="json", METRICS_PORT=0)
    result = celery_client.send_task("taiga_backup.backup")
    report = result.get(timeout=120)
    worker.stop()

    text = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert [line for line in text if not line.startswith("{")] == ["worker: Warm shutdown (MainProcess)"]  # Celery's
    lines = [json.loads(line) for line in text if line.startswith("{")]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    steps = {line["step"]: line for line in lines if "duration_seconds" in line}
    assert set(steps) == set(report["steps"]) >= {"preflight", "quiesce", "dump_db", "restic_backup", "resume"}
    for name, line in steps.items():
        assert line["task_id"] == result.id and line["job"] == "backup" and line["level"] == "INFO"
        assert line["duration_seconds"] == report["steps"][name]["seconds"]
        assert line["message"] == f"backup: {name} finished in {report['steps'][name]['seconds']:.1f}s"
    # Celery's own lines about the task carry its id too
    assert any(line.get("task_id") == result.id and "succeeded" in line["message"] for line in lines)


def test_notification_urls_are_secrets_and_only_http(site):
    url_file = site.secrets / "ping-url"
    url_file.write_text(f"https://hc.example/ping/{TOKEN}\n")
    settings = site.settings(HEALTHCHECK_PING_URL_FILE=str(url_file), NOTIFY_WEBHOOK_URL=f"https://chat.example/{TOKEN}")
    assert settings.healthcheck_ping_url.reveal() == f"https://hc.example/ping/{TOKEN}"
    assert TOKEN not in repr(settings)
    assert {f"https://hc.example/ping/{TOKEN}", f"https://chat.example/{TOKEN}"} <= set(settings.secrets())
    assert notify.ping_url("https://hc.example/ping/abc?create=1", "fail") == "https://hc.example/ping/abc/fail?create=1"
    with pytest.raises(SettingsError, match="^NOTIFY_WEBHOOK_URL: expected an http"):
        site.settings(NOTIFY_WEBHOOK_URL="file:///etc/passwd")


@pytest.mark.slow
def test_a_backup_refused_for_another_job_still_pings_posts_and_counts(site, start_worker, celery_client,
                                                                      endpoint):
    from worker.adapters.redis_store import connect
    from worker.jobs.lease import JobLock

    port = free_port()
    start_idle_worker(start_worker, celery_client, METRICS_PORT=port, NOTIFY_WEBHOOK_URL=f"{endpoint.url}/hook/{TOKEN}",
                      HEALTHCHECK_PING_URL=f"{endpoint.url}/ping/{TOKEN}")
    settings = site.settings()
    other = JobLock(connect(settings), settings.restic_repository, 60)
    other.acquire("prune", "the-prune-in-the-way")
    try:
        refused = celery_client.send_task("taiga_backup.backup")
        with pytest.raises(Exception, match="another taiga-backup job is running"):
            refused.get(timeout=60)
    finally:
        other.release()
    m = wait_for(port, ("taiga_backup_job_failures_total", job("backup")), 1)
    assert m[("taiga_backup_job_failures_total", job("backup"))] == 1
    assert m[("taiga_backup_last_run_success", job("backup"))] == 0
    assert endpoint.paths() == [f"/ping/{TOKEN}/fail", f"/hook/{TOKEN}"]
    [hook] = endpoint.json_bodies("/hook/")
    assert hook["state"] == "FAILURE" and hook["task_id"] == refused.id
    assert "the-prune-in-the-way" in hook["error"]
