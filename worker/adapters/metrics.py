"""Prometheus metrics of the worker, served on METRICS_PORT (0 turns them off).

The worker runs its jobs on a threads pool in one process, so the default registry and one
HTTP server started with the worker are enough. Gauges that alerts depend on ("when did the last
backup succeed?") are re-seeded at start from the reports kept in Redis, so a restarted pod does
not look like one that never backed up.
"""

from __future__ import annotations

import json
import logging
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.metrics_core import Metric

from worker.adapters import redis_store
from worker.adapters.restic import parse_time

log = logging.getLogger("taiga_backup.metrics")

# The kind of job (backup, prune, check, verify, restore, ...) is the label `kind`: `job` is Prometheus'
# own target label, so a metric label of that name is renamed exported_job at scrape time (or, with
# honorLabels, overwrites the target's) and alerts on it silently match nothing. Renamed in 0.2.0.
# For the same reason the instance (TAIGA_INSTANCE) is `taiga_instance`, never `instance`: that one
# is the target's host:port. It is put on every series the worker serves, its own and the process
# collector's, at scrape time (InstanceLabel), so no gauge can forget it and the chart's rules can
# group by it on both sides of an `or`.
INSTANCE_LABEL = "taiga_instance"

LAST_SUCCESS = Gauge("taiga_backup_last_success_timestamp_seconds",
                     "Unix time the last successful job of this kind finished", ["kind"])
LAST_FAILURE = Gauge("taiga_backup_last_failure_timestamp_seconds",
                     "Unix time the last failed job of this kind finished", ["kind"])
LAST_OK = Gauge("taiga_backup_last_run_success", "1 if the last job of this kind succeeded, 0 if it failed", ["kind"])
LAST_DURATION = Gauge("taiga_backup_last_duration_seconds", "How long the last job of this kind took", ["kind"])
STEP_DURATION = Gauge("taiga_backup_last_step_duration_seconds", "How long each step of the last job took",
                      ["kind", "step"])
RUNNING = Gauge("taiga_backup_job_running", "1 while a job of this kind runs", ["kind"])
JOBS = Counter("taiga_backup_jobs", "Jobs finished since the worker started, by outcome", ["kind", "state"])
FAILURES = Counter("taiga_backup_job_failures", "Failed jobs since the worker started", ["kind"])
ADDED_BYTES = Gauge("taiga_backup_last_backup_added_bytes",
                    "Bytes the last successful backup added to each repository", ["repository"])
FILES = Gauge("taiga_backup_last_backup_files", "Media files of the last successful backup, by change",
              ["change"])
DOWNTIME = Gauge("taiga_backup_last_backup_downtime_seconds", "How long the app was down for the last successful backup")
SNAPSHOTS = Gauge("taiga_backup_snapshots", "Snapshots in each repository", ["repository"])
QUIESCED = Gauge("taiga_backup_deployment_quiesced",
                 "1 while the Deployment carries taiga-backup's quiesce annotation (scaled down by a job)",
                 ["deployment"])
BUILD_INFO = Gauge("taiga_backup_build_info", "Always 1; the version of taiga-backup this worker runs", ["version"])
REPOSITORY_SIZE = Gauge("taiga_backup_repository_size_bytes",
                        "Bytes of data stored in each repository (restic stats --mode raw-data)", ["repository"])



def _version() -> str:
    try:
        return version("taiga-backup")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


VERSION = _version()
BUILD_INFO.labels(VERSION).set(1)

SNAPSHOT_CHANGING_JOBS = ("backup", "prune", "restore", "safety_backup")
STATES = ("success", "failure")
_serving = threading.Event()
_count_lock = threading.Lock()
_counter: list = []  # the function that counts snapshots per repository, given to serve()


def _timestamp(report: dict) -> float | None:
    try:
        return parse_time(report["finished_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _known(kind: str) -> None:
    """Creates a kind's counters at 0, so `increase(...)` alerts work from the first failure on."""
    for state in STATES:
        JOBS.labels(kind, state)
    FAILURES.labels(kind)


def _set_last(report: dict) -> None:
    """The "last run" gauges, from one report (at the end of a job or from Redis at start)."""
    kind, ok = report["job"], report.get("state") == "SUCCESS"
    when = _timestamp(report)
    if when is not None:
        (LAST_SUCCESS if ok else LAST_FAILURE).labels(kind).set(when)
    if "duration_seconds" in report:
        LAST_DURATION.labels(kind).set(report["duration_seconds"])
    LAST_OK.labels(kind).set(1 if ok else 0)
    for step, entry in (report.get("steps") or {}).items():
        if isinstance(entry, dict) and "seconds" in entry:
            STEP_DURATION.labels(kind, step).set(entry["seconds"])
    if ok and kind == "backup":
        for repository, added in (report.get("bytes_added") or {}).items():
            if repository != "total":  # the sum of the others; sum() in PromQL gives it
                ADDED_BYTES.labels(repository).set(added)
        for change in ("new", "changed", "unmodified"):
            if (report.get("files") or {}).get(f"files_{change}") is not None:
                FILES.labels(change).set(report["files"][f"files_{change}"])
        if report.get("downtime_seconds") is not None:
            DOWNTIME.set(report["downtime_seconds"])


def job_started(kind: str) -> None:
    _known(kind)
    RUNNING.labels(kind).set(1)


def job_finished(report: dict) -> None:
    kind = report["job"]
    _known(kind)
    RUNNING.labels(kind).set(0)
    state = "success" if report.get("state") == "SUCCESS" else "failure"
    JOBS.labels(kind, state).inc()
    if state == "failure":
        FAILURES.labels(kind).inc()
    _set_last(report)
    if kind in SNAPSHOT_CHANGING_JOBS:
        count_snapshots_soon()


def count_snapshots_soon() -> None:
    """Snapshots per repository, counted in the background: a job's result never waits for it."""
    if _serving.is_set():
        threading.Thread(target=_count_snapshots, name="metrics-snapshots", daemon=True).start()


def _count_snapshots() -> None:
    with _count_lock:  # one count at a time; a queued one sees the newest state
        for name, facts in (_counter[0]() if _counter else {}).items():
            if facts.get("snapshots") is not None:
                SNAPSHOTS.labels(name).set(facts["snapshots"])
            if facts.get("size_bytes") is not None:
                REPOSITORY_SIZE.labels(name).set(facts["size_bytes"])


def quiesced(deployments: dict[str, bool]) -> None:
    """Which deployments a job has scaled down right now (an alert fires if one stays so)."""
    for name, down in deployments.items():
        QUIESCED.labels(name).set(1 if down else 0)


def seed_from_redis(settings) -> int:
    """The last reports (redis_store.last_report_key), oldest first; returns how many."""
    client = redis_store.connect(settings)
    reports = []
    for key in client.scan_iter(match=redis_store.last_report_pattern(settings.instance), count=100):
        try:
            report = json.loads(client.get(key) or "null")
        except ValueError:
            continue
        if isinstance(report, dict) and report.get("job") and _timestamp(report) is not None:
            reports.append(report)
    for report in sorted(reports, key=_timestamp):
        _known(report["job"])
        _set_last(report)
    return len(reports)


class InstanceLabel:
    """A collector serving the default registry's families with `taiga_instance` on every sample:
    several Taigas' workers scraped by one Prometheus stay apart on one dashboard."""

    def __init__(self, instance: str, registry=REGISTRY):
        self.instance, self.registry = instance, registry

    def collect(self):
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={INSTANCE_LABEL: self.instance, **s.labels}) for s in family.samples]
            yield labelled


def registry_of(instance: str) -> CollectorRegistry:
    """What the exporter serves: the default registry, labelled with the instance."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceLabel(instance))
    return registry


def serve(settings, count_snapshots: Callable[[], dict]) -> bool:
    """Starts the exporter once per process; a busy port is logged, never fatal to the worker.
    `count_snapshots` returns {repository: {"snapshots": n, "size_bytes": n}} (it lives with the
    repository layout)."""
    if settings.metrics_port == 0 or _serving.is_set():
        return False
    try:
        start_http_server(settings.metrics_port, registry=registry_of(settings.instance))
    except OSError as exc:
        log.warning("metrics: cannot listen on port %d: %s (metrics are off)", settings.metrics_port, exc.strerror)
        return False
    _counter[:] = [count_snapshots]
    _serving.set()
    log.info("metrics: serving Prometheus metrics on port %d", settings.metrics_port)
    threading.Thread(target=_seed, args=(settings,), name="metrics-seed", daemon=True).start()
    return True


def _seed(settings) -> None:
    try:
        log.info("metrics: seeded from %d stored job report(s)", seed_from_redis(settings))
    except Exception as exc:
        log.warning("metrics: could not read the last job reports from Redis: %s", exc)
    _known("backup")
    _count_snapshots()
